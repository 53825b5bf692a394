"""Planner accuracy on this machine: predicted vs measured wall time and peak memory.

Trains the embedded model on the bundled support sample for --steps steps, after calibrating the
planner's utilisation with a few real steps, and prints both predictions next to the measurements.
Target (issue 8): both within ±25% after calibration.

Run: .venv/bin/python benchmarks/plan_accuracy.py [--steps 40]
"""
import argparse
import json
import os
import resource
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    from ownllm.cli.plan import calibrate
    from ownllm.planning.profiles import this_cpu
    from ownllm.planning.recommend import plan, spec_for
    from ownllm.training.trainer import Trainer

    data = "examples/data/support_en.jsonl"
    mfu = calibrate("smollm2-135m", data)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model="smollm2-135m", train_dataset=data,
                          args={"output_dir": tmp, "max_steps": args.steps, "early_stopping_patience": 0,
                                "save_steps": 10_000, "eval_steps": 10_000})
        start = time.time()
        summary = trainer.train()
        wall = time.time() - start
        with open(os.path.join(tmp, "data", "report.json"), encoding="utf-8") as f:
            report = json.load(f)
    cfg = trainer.config
    examples = summary["train_rows"]
    epochs = summary["global_step"] * cfg.batch_size * cfg.grad_accum / examples
    p = plan(spec_for("smollm2-135m"), this_cpu(), examples=examples, tokens_per_example=report["tokens"]["mean"],
             epochs=epochs, method=cfg.method, micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum,
             lora_r=cfg.lora_r, mfu=mfu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    t_pred, m_pred = p["hours"] * 3600, p["memory_gb"]["total"]
    print(f"calibrated utilisation: {mfu:.1%} of this CPU's {p['precision']} matmul peak ({p['peak_tflops']} TFLOP/s)")
    print(f"time:   predicted {t_pred:6.1f} s, measured {summary['wall_seconds']:6.1f} s (training loop; {wall:.0f} s with "
          f"loading) → ratio {summary['wall_seconds'] / t_pred:.2f}")
    print(f"memory: predicted {m_pred:6.2f} GB, measured peak RSS {peak:.2f} GB → ratio {peak / m_pred:.2f}")


if __name__ == "__main__":
    main()
