"""What a fine-tune learns and what it keeps, with and without forgetting protection.

    python benchmarks/forgetting.py            # support sample (English) and clinic sample (Chinese)

Trains the embedded SmolLM2-135M with the data-size defaults on each bundled sample twice (--protect
off, then the default) and evaluates each run: contains-accuracy on the held-out phrasings, general
probe answers kept of those the base model got right, general-text perplexity change, training wall
time. Then the continual case: the support sample's facts split in two halves, trained one after
the other with `--resume --data`. Figures are printed (benchmarks/RESULTS.md keeps them), never
asserted. Takes about an hour on a 2-core CPU.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def run(data: str, out: str, protect: str) -> dict:
    from ownllm.config import TrainConfig
    from ownllm.evaluation.compare import evaluate
    from ownllm.training.trainer import Trainer

    start = time.time()
    summary = Trainer(config=TrainConfig(data=data, out=out, protect=protect)).train()
    wall = time.time() - start
    result = evaluate(out)
    g = result["general_answers"] or {}
    return {"data": os.path.basename(data), "protect": protect, "contains": result["tuned"]["contains"],
            "base_contains": result["base"]["contains"], "kept": g.get("kept"), "base_right": g.get("base_right"),
            "kept_share": g.get("kept_share"), "perplexity_change": result.get("general_perplexity_change"),
            "train_seconds": round(wall, 1), "steps": summary["global_step"], "stopped": summary["stopped_because"],
            "lost": [x["question"] for x in g.get("lost_examples", [])]}


def show(r: dict) -> None:
    kept = f"{r['kept']}/{r['base_right']} ({r['kept_share']:.0%})" if r["base_right"] else "n/a"
    print(f"{r['data']:<18} protect {r['protect']:<8} contains {r['base_contains']:.0%} → {r['contains']:.0%}  "
          f"general kept {kept}  perplexity {r['perplexity_change']:+.1%}  train {r['train_seconds']:.0f} s "
          f"({r['steps']} steps, {r['stopped']})", flush=True)


def main() -> None:
    samples = [os.path.join(HERE, "..", "examples", "data", f) for f in ("support_en.jsonl", "clinic_zh.jsonl")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in samples:
            by = {}
            for protect in ("off", "default"):
                by[protect] = r = run(data, os.path.join(tmp, f"{os.path.basename(data)}-{protect}"), protect)
                results.append(r)
                show(r)
            print(f"  time with protection / without: {by['default']['train_seconds'] / by['off']['train_seconds']:.2f}x",
                  flush=True)
    print(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
