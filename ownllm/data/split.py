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
    """Shuffle with ``seed`` and cut. Shares of splits that are not needed go to train.

    A row with ``"split": "train" | "val" | "test"`` goes to that split (to train when that split is not
    made). Rows that share a ``"fact"`` (phrasings of one fact, as `data from-docs` writes them) are held
    out by fact: a held-out fact gives one phrasing to val or test and the others to train, so the test
    asks in new words what training taught; a fact with a single phrasing is held out only when too few
    facts have several.
    """
    pinned: dict[str, list] = {"train": [], "val": [], "test": []}
    free = []
    for r in rows:
        pin = r.get("split") if isinstance(r, dict) else None
        if pin in pinned:
            made = pin == "train" or (pin == "val" and need_val) or (pin == "test" and need_test)
            pinned[pin if made else "train"].append(r)
        else:
            free.append(r)
    n_val, n_test = _held_counts(len(free), fractions, need_val, need_test)
    cut = _split_by_fact if any(isinstance(r, dict) and "fact" in r for r in free) else _split_plain
    train, val, test = cut(free, n_val, n_test, seed)
    return pinned["train"] + train, pinned["val"] + val, pinned["test"] + test


def _held_counts(n: int, fractions, need_val: bool, need_test: bool) -> tuple[int, int]:
    from ownllm.data.regime import TINY_ROWS

    if n < TINY_ROWS:  # a row or two held out would test nothing and cost a third of the training rows
        return 0, 0
    _, fv, ft = fractions
    n_val = round(n * fv) if need_val else 0
    n_test = round(n * ft) if need_test else 0
    if need_val and fv > 0 and n >= 10:
        n_val = max(n_val, 1)
    if need_test and ft > 0 and n >= 10:
        n_test = max(n_test, 1)
    return n_val, n_test


def _split_plain(rows: list, n_val: int, n_test: int, seed: int) -> tuple[list, list, list]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val = [rows[i] for i in order[:n_val]]
    test = [rows[i] for i in order[n_val:n_val + n_test]]
    train = [rows[i] for i in order[n_val + n_test:]]
    return train, val, test


def _split_by_fact(rows: list, n_val: int, n_test: int, seed: int) -> tuple[list, list, list]:
    rng = random.Random(seed)
    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.get("fact") or ("row", i), []).append(i)
    keys = list(groups)
    rng.shuffle(keys)
    held = [rng.choice(groups[k]) for k in keys if len(groups[k]) >= 2]
    held += [groups[k][0] for k in keys if len(groups[k]) == 1]
    held = held[:n_val + n_test]
    val, test = held[:n_val], held[n_val:]
    out = set(held)
    return ([r for i, r in enumerate(rows) if i not in out], [rows[i] for i in val], [rows[i] for i in test])
