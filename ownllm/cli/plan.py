"""`ownllm plan`: memory, time and cost before a run starts, fitted to a time budget."""
from __future__ import annotations

import json
import os


CALIBRATION_BATCHES = (8, 2)  # two micro-batch sizes separate the fixed cost per step from the cost per token


def calibrate(model: str, data: str | None, profile, steps: int = 8) -> dict:
    """Train a few real steps here at two micro-batch sizes and fit each step's time as a fixed cost plus a
    cost per computed token (padding included). Returns ``{"mfu", "step_seconds"}``: the utilisation of
    ``profile``'s peak (this machine: its GPU, else its CPU) the tokens run at, and the fixed seconds per
    micro-batch (optimizer, framework) — what the planner's time estimate takes. Forgetting protection is
    off here; the planner adds its cost itself."""
    import tempfile

    from ownllm.planning.estimate import Job, flops_per_token
    from ownllm.planning.plan import spec_for
    from ownllm.training.trainer import Trainer

    points = []  # (computed tokens, seconds) per measured step
    for batch in CALIBRATION_BATCHES:
        with tempfile.TemporaryDirectory() as tmp:
            Trainer(model=model, train_dataset=data or "examples/data/support_en.jsonl",
                    args={"output_dir": tmp, "max_steps": steps, "logging_steps": 1, "early_stopping_patience": 0,
                          "batch_size": batch, "grad_accum": 1, "protect": "off", "save_steps": 10_000,
                          "eval_steps": 10_000}).train()
            with open(os.path.join(tmp, "metrics.jsonl"), encoding="utf-8") as f:
                logged = [json.loads(line) for line in f]
        steps_logged = [(r["computed_tokens_since_last_log"], r["seconds_since_last_log"])
                        for r in logged if r.get("seconds_since_last_log")]
        points += steps_logged[1:]  # the first step warms up
    fixed, per_token = _fit_line(points)
    seq = sum(n for n, _ in points) / len(points) / (sum(CALIBRATION_BATCHES) / len(CALIBRATION_BATCHES))
    flops = flops_per_token(spec_for(model), Job(seq_len=int(seq), precision=profile.best_precision))
    mfu = flops / per_token / (profile.peak_tflops(profile.best_precision) * 1e12)
    return {"mfu": round(mfu, 3), "step_seconds": round(fixed, 4)}


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares seconds = fixed + tokens x per_token, with fixed >= 0."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    fixed = my - slope * mx
    if slope <= 0 or fixed < 0:  # noise: no fixed cost can be told apart; all of the time is per token
        return 0.0, my / mx
    return fixed, slope


def cmd_plan(args) -> int:
    from ownllm.planning.profiles import get_profile, this_machine
    from ownllm.planning.plan import format_plan, matrix, parse_duration, plan, spec_for
    if args.matrix:
        rows = matrix(args.examples or 100_000, args.tokens_per_example or 256, parse_duration(args.time_budget) or 3)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(format_matrix(rows))
        return 0
    from ownllm.errors import ConfigError

    examples, tpe, lengths = args.examples, args.tokens_per_example, None
    if args.data:
        examples, tpe, lengths = _data_size(args.data)
    if not examples or not tpe:
        raise ConfigError("say how much data: --examples N --tokens-per-example T, or --data FILE|RUN_DIR")
    here = this_machine() if args.calibrate or not args.gpu else None
    profile = get_profile(args.gpu) if args.gpu else here
    if args.calibrate and profile.name != here.name:
        raise ConfigError(f"--calibrate measures this machine ({here.name}); it cannot stand in for {profile.name}",
                          hint="drop --gpu to plan for this machine, or drop --calibrate (and give --mfu)")
    data_file = args.data if args.data and not os.path.isdir(args.data) else None
    measured = calibrate(args.model, data_file, here) if args.calibrate else {"mfu": args.mfu, "step_seconds": 0.0}
    from ownllm.training.protect import REPLAY_TOKENS_PER_ROW, replay_for_plan

    replay = replay_for_plan(args.protect, args.method, examples)
    result = plan(spec_for(args.model), profile, examples=examples, tokens_per_example=tpe, epochs=args.epochs,
                  replay_tokens_per_example=REPLAY_TOKENS_PER_ROW, lengths=lengths, step_seconds=measured["step_seconds"],
                  method=args.method, budget_hours=parse_duration(args.time_budget), micro_batch=args.micro_batch,
                  grad_accum=args.grad_accum, lora_r=args.lora_r, gradient_checkpointing=args.gradient_checkpointing,
                  mfu=measured["mfu"], gpus=args.gpus, price_per_hour=args.price_per_hour, zero_stage=args.zero_stage,
                  replay_rows=replay)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def _data_size(data: str) -> tuple[int, float, list[int]]:
    """(training rows, mean tokens per row, row lengths) of a prepared run directory, or of a data file or
    folder prepared in memory as `ownllm train --data` would (same split; nothing is written)."""
    from ownllm.rundir import data_stats

    from ownllm.data.report import lengths_from_histogram

    if os.path.isdir(data) and os.path.exists(os.path.join(data, "data", "report.json")):
        rows, mean, histogram = data_stats(data)
        return rows, mean, lengths_from_histogram(histogram)
    from ownllm.data.prepare import prepare_dataset

    report = prepare_dataset([data]).report
    train = report["splits"]["train"]
    lengths = [min(n, report["max_seq_len"]) for n in report["_lengths"]]  # every split: the same distribution
    return train, round(report["train_tokens_per_epoch"] / max(1, train), 1), lengths


def format_matrix(rows: list[dict]) -> str:
    out = ["| model | method | GPU | fits (with) | memory GB | hours / epoch | epochs in 3 h |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        fits = ("yes" + (f" ({r['settings']})" if r["settings"] else "")) if r["fits"] else "no"
        out.append(f"| {r['model']} | {r['method']} | {r['gpu']} | {fits} | {r['memory_gb']:.1f} | "
                   f"{r['hours_per_epoch']:.2f} | {r['epochs_in_3h'] if r['fits'] else '—'} |")
    return "\n".join(out)


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory, time and cost of a run on any hardware, fitted to a time budget")
    p.add_argument("--model", default="smollm2-135m", help="registry alias or model folder (default smollm2-135m)")
    p.add_argument("--gpu", help="hardware profile, e.g. 'RTX 4090', A100, H100, cpu (default: this machine)")
    p.add_argument("--data", help="a data file or folder (read, not written), or a prepared run directory: "
                                   "examples and tokens per example from it")
    p.add_argument("--examples", type=int, help="training examples")
    p.add_argument("--tokens-per-example", type=float, help="mean tokens per example")
    p.add_argument("--epochs", type=float, default=3, help="epochs (default 3)")
    p.add_argument("--method", default="lora", choices=["lora", "qlora", "dora", "full", "prefix"])
    p.add_argument("--time-budget", help="e.g. 3h, 90m, 1h30m")
    p.add_argument("--micro-batch", type=int, default=8, help="micro-batch per device (default 8)")
    p.add_argument("--grad-accum", type=int, default=4, help="gradient accumulation (default 4)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--protect", default="default", choices=["off", "default", "strong"],
                   help="forgetting protection, as `ownllm train --protect` (default: default); its replayed rows "
                        "count in the time")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel devices (memory is per device, time for all)")
    p.add_argument("--zero-stage", type=int, default=0, choices=[0, 1, 2, 3],
                   help="DeepSpeed ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also weights")
    p.add_argument("--mfu", type=float, help="utilisation to assume (default: 0.40 GPU, 0.28 QLoRA, 0.45 CPU)")
    p.add_argument("--calibrate", action="store_true",
                   help="measure utilisation and the fixed cost per step with a few real steps here")
    p.add_argument("--price-per-hour", type=float, help="USD per device-hour (default: example cloud prices)")
    p.add_argument("--matrix", action="store_true", help="the guide's model-selection table, corrected")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plan)
