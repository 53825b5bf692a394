"""Planner accuracy on this machine: does a calibrated plan predict a run it did not calibrate on?

Calibrates the planner's utilisation the way `ownllm plan --calibrate` does (a few real steps on
the support sample), then trains three other runs — different data, language and sequence length
than the calibration steps — and prints, for each, the planner's predicted training time and peak
memory next to the measured ones, and their ratio. The prediction is made before the run starts,
from what `ownllm plan --data FILE` knows (rows, mean tokens per row, method, batch, epochs), with
the forgetting protection's replay rows counted as `ownllm train` adds them.
Target (issue 20): every ratio within ±25% (0.80–1.25).

Run: .venv/bin/python benchmarks/plan_accuracy.py [--steps 24]
"""
import argparse
import json
import multiprocessing
import os
import resource
import tempfile

RUNS = [  # (name, data file, settings beyond the defaults)
    ("clinic (zh), defaults", "examples/data/clinic_zh.jsonl", {}),
    ("legal (zh), max seq 64, batch 4", "examples/data/legal_zh.jsonl", {"max_seq_len": 64, "batch_size": 4}),
    ("general text (en), max seq 256", "ownllm/resources/general_text.txt", {"max_seq_len": 256, "batch_size": 4}),
]


def predict(data: str, settings: dict, steps: int, measured: dict) -> dict:
    """The planner's prediction for `steps` optimizer steps of a run on `data`, made before it starts."""
    import dataclasses

    from ownllm.training.config import TrainConfig
    from ownllm.data.prepare import prepare_dataset
    from ownllm.planning.estimate import steps_per_epoch
    from ownllm.planning.profiles import this_machine
    from ownllm.planning.plan import plan, spec_for
    from ownllm.training.defaults import resolve_defaults
    from ownllm.training.protect import DRIFT_ROWS, REPLAY_TOKENS_PER_ROW, replay_for_plan

    report = prepare_dataset([data], **{k: v for k, v in settings.items() if k == "max_seq_len"}).report
    rows = report["splits"]["train"]
    tokens = report["train_tokens_per_epoch"] / rows
    lengths = [min(n, report["max_seq_len"]) for n in report["_lengths"]]
    cfg = resolve_defaults(dataclasses.replace(TrainConfig(model="smollm2-135m"), **settings), rows)
    replay = replay_for_plan(cfg.protect, cfg.method, rows)
    epochs = steps / steps_per_epoch(rows + replay, cfg.batch_size, cfg.grad_accum)
    p = plan(spec_for(cfg.model), this_machine(), examples=rows, replay_rows=replay, tokens_per_example=tokens,
             replay_tokens_per_example=min(REPLAY_TOKENS_PER_ROW, cfg.max_seq_len), lengths=lengths,
             epochs=epochs, method=cfg.method, micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum,
             lora_r=cfg.lora_r, drift_rows=DRIFT_ROWS, **measured)
    return {"rows": rows, "replay": replay, "tokens_per_row": round(tokens, 1), "seconds": p["hours"] * 3600,
            "memory_gb": p["memory_gb"]["total"]}


def measure(data: str, settings: dict, steps: int) -> tuple[dict, float]:
    """Train in this (fresh) process: the run's summary and the process's peak RSS in GB."""
    from ownllm.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        summary = Trainer(model="smollm2-135m", train_dataset=data,
                          args={"output_dir": tmp, "max_steps": steps, "early_stopping_patience": 0,
                                "save_steps": 10_000, **settings}).train()
    return summary, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per measured run")
    args = ap.parse_args()
    from ownllm.training.calibrate import calibrate
    from ownllm.planning.profiles import this_machine

    here = this_machine()
    measured = calibrate("smollm2-135m", "examples/data/support_en.jsonl", here)
    print(f"calibrated on examples/data/support_en.jsonl (micro-batches of 8 and 2): utilisation "
          f"{measured['mfu']:.1%} of {here.name}'s {here.best_precision} peak "
          f"({here.peak_tflops(here.best_precision):.2f} TFLOP/s) + {measured['step_seconds']:.3f} s per micro-batch\n")
    print("| run | rows (+replay) | tokens/row | predicted s | measured s | time ratio | predicted GB | peak RSS GB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    spawn = multiprocessing.get_context("spawn")  # each run in a fresh process: its own peak RSS
    for name, data, settings in RUNS:
        p = predict(data, settings, args.steps, measured)
        with spawn.Pool(1) as pool:
            s, peak = pool.apply(measure, (data, settings, args.steps))
        t = s["wall_seconds"] / p["seconds"]
        ratios.append(t)
        print(f"| {name} | {p['rows']} (+{p['replay']}) | {p['tokens_per_row']} | {p['seconds']:.1f} | "
              f"{s['wall_seconds']:.1f} | **{t:.2f}** | {p['memory_gb']:.2f} | {peak:.2f} | {peak / p['memory_gb']:.2f} |",
              flush=True)
    inside = sum(0.8 <= r <= 1.25 for r in ratios)
    print(f"\n{inside} of {len(ratios)} time ratios within ±25% (0.80–1.25)")
    print(json.dumps({**measured, "time_ratios": [round(r, 3) for r in ratios]}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
