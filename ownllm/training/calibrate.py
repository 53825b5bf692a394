"""`ownllm plan --calibrate`: a few real training steps here, fitted as a fixed cost per step plus a cost per token."""
from __future__ import annotations

import json
import tempfile

CALIBRATION_BATCHES = (8, 2)  # two micro-batch sizes separate the fixed cost per step from the cost per token


def calibrate(model: str, data: str | None, profile, steps: int = 8) -> dict:
    """Train a few real steps here at two micro-batch sizes and fit each step's time as a fixed cost plus a
    cost per computed token (padding included). Returns ``{"mfu", "step_seconds"}``: the utilisation of
    ``profile``'s peak (this machine: its GPU, else its CPU) the tokens run at, and the fixed seconds per
    micro-batch (optimizer, framework) — what the planner's time estimate takes. Forgetting protection is
    off here; the planner adds its cost itself. Runs the same stages as ``ownllm train``."""
    from ownllm.planning.estimate import Job, flops_per_token
    from ownllm.planning.plan import spec_for
    from ownllm.rundir import RunDir
    from ownllm.training.config import TrainConfig
    from ownllm.training.data import prepare_for_training
    from ownllm.training.plan import plan_run
    from ownllm.training.train import train_run

    points = []  # (computed tokens, seconds) per measured step
    for batch in CALIBRATION_BATCHES:
        with tempfile.TemporaryDirectory() as tmp:
            run = RunDir(tmp)
            cfg = TrainConfig(model=model, data=data or "examples/data/support_en.jsonl", out=tmp, max_steps=steps,
                              logging_steps=1, early_stopping_patience=0, batch_size=batch, grad_accum=1,
                              protect="off", save_steps=10_000, eval_steps=10_000).validate()
            prepared = prepare_for_training(cfg.data, cfg, run)
            train_run(plan_run(cfg, prepared, strict=False).settings, prepared, run)
            with open(run.metrics_jsonl, encoding="utf-8") as f:
                logged = [json.loads(line) for line in f]
        steps_logged = [(r["computed_tokens_since_last_log"], r["seconds_since_last_log"])
                        for r in logged if r.get("seconds_since_last_log")]
        points += steps_logged[1:]  # the first step warms up
    fixed, per_token = fit_line(points)
    seq = sum(n for n, _ in points) / len(points) / (sum(CALIBRATION_BATCHES) / len(CALIBRATION_BATCHES))
    flops = flops_per_token(spec_for(model), Job(seq_len=int(seq), precision=profile.best_precision))
    mfu = flops / per_token / (profile.peak_tflops(profile.best_precision) * 1e12)
    return {"mfu": round(mfu, 3), "step_seconds": round(fixed, 4)}


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares seconds = fixed + tokens x per_token, with fixed >= 0."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    fixed = my - slope * mx
    if slope <= 0 or fixed < 0:  # noise: no fixed cost can be told apart; all of the time is per token
        return 0.0, my / mx
    return fixed, slope
