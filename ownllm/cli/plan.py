"""`ownllm plan`: memory, time and cost before a run starts, fitted to a time budget.

Its flags are PlanConfig's (the hardware side) and the TrainConfig fields a plan depends on, so a setting
left out is chosen as `ownllm train` would choose it for the data. It calls the plan stage, ``plan_run``.
"""
from __future__ import annotations

import json
import os
import sys

from ownllm.config import add_flags, values_from_args

# TrainConfig's fields that change a plan: the rest (checkpoints, logging, ...) do not
PLANNED = ("data", "model", "method", "epochs", "batch_size", "grad_accum", "lora_r", "gradient_checkpointing",
           "protect", "time_budget", "max_seq_len")


def cmd_plan(args) -> int:
    import dataclasses

    from ownllm.errors import ConfigError
    from ownllm.export.export import export_notes
    from ownllm.planning.profiles import this_machine
    from ownllm.training.config import TrainConfig
    from ownllm.training.plan import PlanConfig, plan_run

    if args.matrix:
        return _matrix(args)
    options = PlanConfig(**values_from_args(args, PlanConfig)).validate()
    cfg = dataclasses.replace(TrainConfig(), **values_from_args(args, TrainConfig)).validate()
    run, data = _data(cfg.data) if cfg.data else (None, None)
    measured = None
    if options.calibrate:
        from ownllm.training.calibrate import calibrate

        here = this_machine()
        if options.gpu and here.name != _profile_name(options.gpu):
            raise ConfigError(f"--calibrate measures this machine ({here.name}); it cannot stand in for "
                              f"{_profile_name(options.gpu)}",
                              hint="drop --gpu to plan for this machine, or drop --calibrate (and give --mfu)")
        measured = calibrate(cfg.model, cfg.data if cfg.data and not os.path.isdir(cfg.data) else None, here)
    result = plan_run(cfg, data, run, options, measured)
    notes = export_notes(cfg.model)
    print(json.dumps({**result.to_json(), "export_notes": notes}, indent=2, ensure_ascii=False) if args.json
          else "\n".join([result.text] + [f"export: {n}" for n in notes]))
    if run is not None:
        print(f"wrote {run.plan_json}", file=sys.stderr)
    return 0


def _profile_name(gpu: str) -> str:
    from ownllm.planning.profiles import get_profile

    return get_profile(gpu).name


def _data(data: str):
    """(the run directory whose plan.json the plan is written to, the prepared data): a prepared run
    directory is planned in place; a data file or folder is prepared in memory as `ownllm train --data`
    would (the same split; nothing is written)."""
    from ownllm.data.prepare import prepare_dataset
    from ownllm.rundir import RunDir

    run = RunDir(data)
    if os.path.isdir(data) and run.data_report() is not None:
        return run, run
    return None, prepare_dataset([data])


def _matrix(args) -> int:
    from ownllm.planning.plan import matrix, parse_duration

    rows = matrix(args.examples or 100_000, args.tokens_per_example or 256, parse_duration(args.time_budget) or 3)
    print(json.dumps(rows, indent=2) if args.json else format_matrix(rows))
    return 0


def format_matrix(rows: list[dict]) -> str:
    out = ["| model | method | GPU | fits (with) | memory GB | hours / epoch | epochs in 3 h |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        fits = ("yes" + (f" ({r['settings']})" if r["settings"] else "")) if r["fits"] else "no"
        out.append(f"| {r['model']} | {r['method']} | {r['gpu']} | {fits} | {r['memory_gb']:.1f} | "
                   f"{r['hours_per_epoch']:.2f} | {r['epochs_in_3h'] if r['fits'] else '—'} |")
    return "\n".join(out)


def register(sub) -> None:
    from ownllm.training.config import TrainConfig
    from ownllm.training.plan import PlanConfig

    p = sub.add_parser("plan", help="memory, time and cost of a run on any hardware, fitted to a time budget",
                       description="ownllm plan --data FILE|RUN_DIR [--model M] [--time-budget 30m] | ownllm plan "
                                   "--model M --gpu 'RTX 4090' --examples N --tokens-per-example T | ownllm plan "
                                   "--matrix. Settings left out are chosen as `ownllm train` chooses them for the "
                                   "data; with a prepared RUN_DIR the plan is written to RUN_DIR/plan.json.")
    add_flags(p, PlanConfig)
    add_flags(p, TrainConfig, only=PLANNED)
    p.add_argument("--matrix", action="store_true", help="the guide's model-selection table, corrected")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plan)
