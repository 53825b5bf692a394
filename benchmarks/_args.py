"""The flags the benchmarks share (run as scripts: this folder is on sys.path)."""
from __future__ import annotations

import argparse


def median_range(runs: list[dict], key: str, fmt) -> str:
    """The median of ``key`` over ``runs`` with its range, "median [lowest–highest]" (README and RESULTS quote
    medians of several runs, never the best one); "n/a" when no run has it."""
    import statistics

    values = sorted(r[key] for r in runs if r.get(key) is not None)
    return f"{fmt(statistics.median(values))} [{fmt(values[0])}–{fmt(values[-1])}]" if values else "n/a"


def train_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` flags as TrainConfig fields, each typed as the CLI types it (``ownllm.config.coerce``:
    ``lr=1e-4`` a float, ``hf_args={"beta": 0.5}`` a dict; an unknown field is an error naming the close ones)."""
    from ownllm.config import coerce
    from ownllm.training.config import TrainConfig

    return dict(coerce(TrainConfig, *item.split("=", 1)) for item in items)


def generation_args(doc: str, run: bool = False) -> argparse.Namespace:
    """--model, --tokens (new tokens per answer) and --rounds (best of N), parsed; with ``run``, also --run
    (a tuned run directory of that model, default runs/demo, which `make demo` makes)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    if run:
        ap.add_argument("--run", default="runs/demo", help="a tuned run of --model (skipped when missing)")
    return ap.parse_args()
