"""Deterministic train/val/test splits (8:1:1 by default)."""
from __future__ import annotations

import random

from ownllm.errors import ConfigError


def parse_split(spec) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' or a 3-sequence → fractions that sum to 1."""
    try:
        parts = [float(x) for x in (spec.split(",") if isinstance(spec, str) else spec)]
    except (TypeError, ValueError):
        raise ConfigError(f"--split '{spec}' is not three numbers", hint="e.g. --split 0.8,0.1,0.1") from None
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise ConfigError(f"--split needs three non-negative fractions (got {spec})", hint="e.g. 0.8,0.1,0.1")
    if abs(sum(parts) - 1.0) > 1e-6:
        raise ConfigError(f"--split fractions must sum to 1 (got {spec}, sum {sum(parts):g})",
                          hint="e.g. --split 0.8,0.1,0.1")
    if parts[0] == 0:
        raise ConfigError("--split gives nothing to train on", hint="the first fraction is the training share")
    return parts[0], parts[1], parts[2]


def split_rows(rows: list, fractions: tuple[float, float, float], seed: int,
               need_val: bool = True, need_test: bool = True) -> tuple[list, list, list]:
    """Shuffle with ``seed`` and cut. Shares of splits that are not needed go to train."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n = len(rows)
    _, fv, ft = fractions
    n_val = round(n * fv) if need_val else 0
    n_test = round(n * ft) if need_test else 0
    if need_val and fv > 0 and n >= 10:
        n_val = max(n_val, 1)
    if need_test and ft > 0 and n >= 10:
        n_test = max(n_test, 1)
    val = [rows[i] for i in order[:n_val]]
    test = [rows[i] for i in order[n_val:n_val + n_test]]
    train = [rows[i] for i in order[n_val + n_test:]]
    return train, val, test
