"""CLI commands of the core flow: `data inspect|prepare|from-docs`, `train`, `eval`, `compare`, `quickstart`.

Each stage's flags are generated from its dataclass (``ownllm.config.add_flags``): `data` from
PrepareConfig, `train` and `quickstart` from TrainConfig. The commands call the stage functions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from ownllm.config import add_flags, values_from_args
from ownllm.training.config import TrainConfig


# -- data ------------------------------------------------------------------------------------
def cmd_data_inspect(args) -> int:
    from ownllm.data.prepare import PrepareConfig, prepare_dataset
    from ownllm.data.report import to_markdown

    result = prepare_dataset(args.inputs, None, **values_from_args(args, PrepareConfig))
    print(to_markdown(result.report))
    return 0


def cmd_data_prepare(args) -> int:
    from ownllm.data.prepare import PrepareConfig, prepare_dataset
    from ownllm.errors import ConfigError
    from ownllm.rundir import RunDir

    if os.path.isfile(args.out):
        raise ConfigError(f"--out {args.out} is a file: give a folder for the run (it will be created)")
    run = RunDir(args.out)
    r = prepare_dataset(args.inputs, run.path, val=args.val, test=args.test,
                        **values_from_args(args, PrepareConfig)).report
    print(f"format {r['format']} ({r['format_reason']}); {r['total_rows']} rows read, {r['kept_rows']} kept, "
          f"{r['rejected_rows']} rejected; train {r['splits']['train']} / val {r['splits']['val']} / "
          f"test {r['splits']['test']}; {r['train_tokens_per_epoch']:,} training tokens per epoch")
    print(f"wrote {run.data_dir}/ (train/val/test.jsonl, rejected.jsonl, report.md, report.json); "
          f"next: ownllm plan --data {run.path}, ownllm train {run.path}")
    return 0


def _add_prepare_args(p, with_out: bool) -> None:
    from ownllm.data.prepare import PrepareConfig

    p.add_argument("inputs", nargs="+", help="files or folders (.jsonl .json .csv .tsv .parquet .txt .md)")
    if with_out:
        p.add_argument("--out", required=True, help="run directory to write data/ into")
        p.add_argument("--val", help="your own validation file (used instead of a split)")
        p.add_argument("--test", help="your own test file (used instead of a split)")
    add_flags(p, PrepareConfig)


def _add_from_docs(dsub) -> None:
    p = dsub.add_parser(
        "from-docs", help="documents (PDF, DOCX, HTML, Markdown, text) → question–answer rows for `data prepare`",
        description="Reads documents (folders recursively), turns the FAQ they state into rows, and with --teacher asks "
                    "a model for grounded pairs per chunk, keeping only those whose quote is in the document. Writes "
                    "OUT.jsonl (one row per phrasing, with source and fact) and OUT.report.md/json. Then: "
                    "ownllm data prepare OUT.jsonl --out runs/NAME (one phrasing of a fact is held out for testing).")
    from ownllm.data.from_docs import FromDocsConfig

    p.add_argument("inputs", nargs="+", help="documents or folders (.pdf .docx .html .md .txt)")
    p.add_argument("--out", required=True, help="the .jsonl file to write (its report beside it)")
    add_flags(p, FromDocsConfig)
    p.add_argument("--no-cache", action="store_true", help="ask the teacher again instead of reusing cached replies")
    p.set_defaults(func=cmd_data_from_docs)


def cmd_data_from_docs(args) -> int:
    from ownllm.data.from_docs import docs_to_data

    from ownllm.data.from_docs import FromDocsConfig

    r = docs_to_data(args.inputs, args.out, cache=not args.no_cache, **values_from_args(args, FromDocsConfig))
    t = r.get("teacher")
    print(f"{len(r['documents'])} documents: {r['extracted_pairs']} FAQ pairs found"
          + (f"; teacher: {t['proposed']} pairs proposed, {t['kept']} kept ({t['kept_rows']} rows), "
             f"{t['calls']} calls (+{t['cached']} cached)" if t else "")
          + (f"; {r['text_rows']} text sections" if "text_rows" in r else ""))
    for f, why in r["unread"].items():
        print(f"not read: {why}", file=sys.stderr)
    stem = args.out[: -len(".jsonl")]
    text = f" {r['text_out']}" if r.get("text_out") else ""
    print(f"wrote {args.out} ({r['rows']} rows, {r['facts']} facts){text and ','}{text} and {stem}.report.md; next: "
          f"ownllm data prepare {args.out}{text} --out runs/NAME")
    return 0


# -- train -----------------------------------------------------------------------------------
def config_from_args(args, base: TrainConfig | None = None) -> TrainConfig:
    from ownllm.config import load_yaml

    cfg = base or (load_yaml(args.config, TrainConfig, overrides=args.overrides) if getattr(args, "config", None)
                   else TrainConfig())
    updates = values_from_args(args, TrainConfig)
    if isinstance(updates.get("epochs"), float) and updates["epochs"].is_integer():
        updates["epochs"] = int(updates["epochs"])  # config.yaml says `epochs: 3`, as it was given
    return dataclasses.replace(cfg, **updates)


def cmd_train(args) -> int:
    from ownllm.rundir import RunDir
    from ownllm.training.trainer import Trainer

    if args.config and RunDir(args.config).is_prepared() and not args.data:
        # `ownllm train RUN_DIR` after `ownllm data prepare ... --out RUN_DIR`: train that run, in place
        args.data, args.out, args.config = args.config, args.out or args.config, None
    elif args.config and not args.config.endswith((".yaml", ".yml")) and "=" not in args.config:
        from ownllm.errors import ConfigError

        raise ConfigError(f"'{args.config}' is not a .yaml config or a prepared run directory",
                          hint="use --data FILE for a dataset, or `ownllm train RUN_DIR` after `ownllm data prepare`")
    if (args.num_processes > 1 or args.num_machines > 1) and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    if args.resume:
        return _resume(args)
    cfg = config_from_args(args)
    if not cfg.data:
        from ownllm.errors import ConfigError

        raise ConfigError("no training data", hint="ownllm train --data my.jsonl (or a config.yaml naming data:)")
    summary = Trainer(config=cfg).train()
    _print_summary(summary)
    return 0


LAUNCH_FLAGS = ("--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port")


def _launch(args) -> int:
    """Run this same command in N processes per machine (torchrun), without the launch flags."""
    from ownllm.errors import ConfigError
    from ownllm.training.distributed import launch

    if args.num_processes < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise ConfigError("--num-processes and --num-machines must be >= 1 and --machine-rank in "
                          f"0..{args.num_machines - 1}")
    if args.num_machines > 1 and not args.main_process_ip:
        raise ConfigError("several machines need --main-process-ip (the address of machine rank 0)")
    argv, skip = [], False
    for token in args.raw_argv:
        if skip:
            skip = False
        elif token in LAUNCH_FLAGS:
            skip = True
        elif not token.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            argv.append(token)
    return launch(argv, args.num_processes, args.num_machines, args.machine_rank, args.main_process_ip,
                  args.main_process_port)


def _resume(args) -> int:
    from ownllm.config import load_yaml
    from ownllm.rundir import RunDir
    from ownllm.training.trainer import Trainer

    run = RunDir(args.resume)
    cfg_path = run.config_yaml
    if not os.path.exists(cfg_path):
        from ownllm.errors import ConfigError

        raise ConfigError(f"{args.resume} is not a run directory (no config.yaml)")
    if args.data:  # continual learning: a new stage on new rows, from the finished adapter
        if args.checkpoint:
            from ownllm.errors import ConfigError

            raise ConfigError("--resume RUN --data FILE starts a new stage from the run's finished adapter; "
                              "--checkpoint does not apply", hint="drop --checkpoint")
        new_data, args.data = args.data, None
        cfg = config_from_args(args, load_yaml(cfg_path, TrainConfig))
        cfg.out = cfg.data = args.resume
        _print_summary(Trainer(config=cfg).continue_with(new_data, args.additional_epochs))
        return 0
    cfg = config_from_args(args, load_yaml(cfg_path, TrainConfig))
    cfg.out = args.resume
    cfg.data = args.resume if run.is_prepared() else cfg.data
    trainer = Trainer(config=cfg)
    trainer.resume_from_checkpoint(args.checkpoint)
    _print_summary(trainer.train(additional_epochs=args.additional_epochs))
    return 0


def _print_summary(s: dict) -> None:
    if "run_dir" not in s:  # a non-main process of a multi-process run: the main one reports
        return
    print(json.dumps({k: s[k] for k in ("run_dir", "output", "stopped_because", "global_step", "final_train_loss",
                                        "best_val_loss", "tokens_per_second", "wall_seconds")}, indent=2,
                     ensure_ascii=False))


# -- eval and quickstart ---------------------------------------------------------------------
def cmd_eval(args) -> int:
    from ownllm.evaluation.evaluate import EvalConfig, evaluate
    from ownllm.rundir import RunDir

    cfg = EvalConfig(**values_from_args(args, EvalConfig)).validate()
    result = evaluate(args.run_dir, data=cfg.data, no_base=cfg.no_base, max_samples=cfg.max_samples,
                      max_new_tokens=cfg.max_new_tokens)
    print(result["headline"])
    print(f"report: {RunDir(args.run_dir).eval_file('report.html')}")
    return 0


def cmd_compare(args) -> int:
    from ownllm.evaluation.evaluate import compare_runs

    print(compare_runs(args.run_a, args.run_b))
    return 0


def cmd_quickstart(args) -> int:
    """The pipeline, stage by stage: prepare → plan → train → evaluate, all into one run directory."""
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.rundir import RunDir
    from ownllm.training.data import prepare_for_training
    from ownllm.training.plan import plan_run
    from ownllm.training.train import train_run

    cfg = config_from_args(args).validate()
    if not cfg.data:
        from ownllm.errors import ConfigError

        raise ConfigError("no training data", hint="ownllm quickstart --data my.jsonl")
    run = RunDir(cfg.out) if cfg.out else RunDir.default_for(cfg.data)
    cfg.out = run.path
    _stage(1, f"preparing {cfg.data} into {run.data_dir}")
    data = prepare_for_training(cfg.data, cfg, run)
    _stage(2, "planning")
    plan = plan_run(cfg, data, run, strict=False)
    print(plan.text, file=sys.stderr)
    _stage(3, f"training into {run.path}")
    trained = train_run(plan.settings, data, run)
    if trained.summary["stopped_because"] == "interrupted":  # the person asked to stop: no evaluation now
        print(f"stopped; resume with: ownllm train --resume {run.path}, then: ownllm eval {run.path}")
        return 0
    if not data.test:  # a tiny dataset: everything trained, nothing to test on honestly
        print(f"\n  no test rows: {trained.summary['regime']['why']}.\n  test it on questions it never saw: "
              f"ownllm eval {run.path} --data NEW_QUESTIONS.jsonl\n\n  chat with it:   ownllm chat {run.path}")
        return 0
    _stage(4, "evaluating base vs tuned on the held-out test split")
    result = evaluate(run, max_samples=args.max_samples)
    print(f"\n  {result['headline']}\n")
    for label, path in (("data report", run.data_file("report.md")), ("plan", run.plan_json),
                        ("training curve", run.loss_png), ("train summary", run.summary_json),
                        ("result", trained.summary["output"]), ("eval report", run.eval_file("report.html")),
                        ("tensorboard", run.tensorboard_dir)):
        print(f"  {label:<15}{path}")
    print(f"\n  chat with it:   ownllm chat {run.path}")
    return 0


def cmd_tune(args) -> int:
    """prepare → search (trials on the run's validation rows) → the best trial becomes the run."""
    from ownllm.errors import ConfigError
    from ownllm.training.trainer import Trainer
    from ownllm.training.tune import TuneConfig

    cfg = config_from_args(args).validate()
    options = TuneConfig(**values_from_args(args, TuneConfig)).validate()
    if not cfg.data:
        raise ConfigError("no training data", hint="ownllm tune --data my.jsonl --time-budget 30m")
    trainer = Trainer(config=cfg)
    trainer.tune(trials=options.trials, prune=not options.no_prune)
    result = trainer.tune_result
    print(f"\n{result.table()}\n")
    print(f"best: trial {result.best['number']} ({result.rule}); {len(result.trials)} trials in "
          f"{result.seconds / 60:.1f} min" + (f" of a {cfg.time_budget} budget" if cfg.time_budget else ""))
    print(f"the run {trainer.run_dir} now holds it; every trial: {trainer.run_dir}/tune/trials.jsonl")
    print(f"\n  evaluate it:    ownllm eval {trainer.run_dir}\n  chat with it:   ownllm chat {trainer.run_dir}")
    return 0


def _stage(n: int, what: str) -> None:
    print(f"[{n}/4] {what}", file=sys.stderr, flush=True)


def register(sub) -> None:
    from ownllm.evaluation.evaluate import EvalConfig

    d = sub.add_parser("data", help="inspect or prepare a dataset (the data doctor)")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = dsub.add_parser("inspect", help="report on a dataset; writes nothing")
    _add_prepare_args(p, with_out=False)
    p.set_defaults(func=cmd_data_inspect)
    p = dsub.add_parser("prepare", help="check, clean, deduplicate and split into RUN_DIR/data/")
    _add_prepare_args(p, with_out=True)
    p.set_defaults(func=cmd_data_prepare)
    _add_from_docs(dsub)

    p = sub.add_parser("train", help="fine-tune a model (LoRA, QLoRA, full, DoRA, prefix)",
                       description="ownllm train --data my.jsonl [flags] | ownllm train RUN_DIR [flags] | "
                                   "ownllm train config.yaml [key=value ...] "
                                   "| ownllm train --resume RUN_DIR [--checkpoint checkpoint-N] [--additional-epochs N] "
                                   "| ownllm train --resume RUN_DIR --data NEW_FILE [--additional-epochs N] (continual: "
                                   "new rows on top of the finished run; the earlier stage moves to RUN_DIR/stages/N)")
    p.add_argument("config", nargs="?", metavar="CONFIG|RUN_DIR",
                   help="a config.yaml (saved flags), e.g. runs/NAME/config.yaml, or a run directory prepared by "
                        "`ownllm data prepare` (trained in place)")
    p.add_argument("overrides", nargs="*", help="key=value settings that override the config")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest (or --checkpoint) checkpoint; "
                                                        "with --data NEW_FILE: train new rows on top of the finished run")
    p.add_argument("--checkpoint", help="with --resume: e.g. checkpoint-100")
    p.add_argument("--additional-epochs", type=float, help="with --resume: this many more epochs")
    add_flags(p, TrainConfig)
    g = p.add_argument_group("several processes (data parallel; torchrun underneath, gloo on CPUs, NCCL on GPUs)")
    g.add_argument("--num-processes", type=int, default=1, help="processes on this machine, e.g. one per GPU")
    g.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    g.add_argument("--machine-rank", type=int, default=0, help="this machine's rank, 0 .. num-machines - 1")
    g.add_argument("--main-process-ip", help="address of the rank-0 machine (several machines)")
    g.add_argument("--main-process-port", type=int, default=29500, help="its port (default 29500)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="before/after report card of a run on its held-out test split")
    p.add_argument("run_dir")
    add_flags(p, EvalConfig)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="two evaluated runs side by side (e.g. LoRA vs QLoRA)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tune", help="automatic tuning: search lr, rank, epochs and protection within --time-budget",
                       description="Trials train on the run's own validation rows (never its test rows), scored by "
                                   "validation loss + 2 x general drift; bad trials stop early; the best trial becomes "
                                   "the run (RUN/tune/ keeps every trial). Give --time-budget (e.g. 30m) or --trials N; "
                                   "the same command again goes on after a crash. Training flags are `ownllm train`'s: "
                                   "a setting you give (--lr, --lora-r, --epochs) is not searched.")
    from ownllm.training.tune import TuneConfig

    add_flags(p, TuneConfig)
    add_flags(p, TrainConfig)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("quickstart", help="prepare → plan → train → evaluate, in one command",
                       description="The four stages into one run directory: data/ (prepare), plan.json (plan), "
                                   "adapter/ and train_summary.json (train), eval/ (evaluate: base vs tuned on the "
                                   "held-out test split). Training flags are `ownllm train`'s.")
    add_flags(p, EvalConfig, only=("max_samples",))
    add_flags(p, TrainConfig)
    p.set_defaults(func=cmd_quickstart)
