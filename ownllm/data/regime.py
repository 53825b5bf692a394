"""Which size regime a dataset falls in, and why: the data report and the plan say it, the training
defaults follow it (``training.defaults.resolve_defaults``).

Measured with ``benchmarks/small_data.py`` (RESULTS.md, "Small datasets"): on a few dozen rows the
validation split holds a handful of rows, and early stopping on them is noise — a 45-row domain stopped
at epoch 7 on 4 rows and answered 8 of 15 held-out phrasings. Below ``TRUSTED_VAL_ROWS`` validation rows,
training runs its planned steps and keeps the last one; validation is still measured and plotted.
"""
from __future__ import annotations

TINY_ROWS = 10          # fewer kept rows than this: nothing can be held out for an honest test
TRUSTED_VAL_ROWS = 20   # early stopping and the best checkpoint follow validation from this many rows up


SMALL_ROWS, MEDIUM_ROWS = 1000, 5000   # training rows: the recipe's tiers (rank, learning rate, epochs)
# the LoRA recipe of each tier (``training.defaults.resolve_defaults`` reads it; the report says it)
RECIPES = {"small": {"lora_r": 64, "lr": 1e-3, "epochs": 10},
           "medium": {"lora_r": 32, "lr": 5e-4, "epochs": 5},
           "large": {"lora_r": 16, "lr": 2e-4, "epochs": 3}}


def recipe_tier(train_rows: int) -> str:
    """``small``, ``medium`` or ``large``: the recipe's tier for this many training rows."""
    return "small" if train_rows < SMALL_ROWS else "medium" if train_rows < MEDIUM_ROWS else "large"


def size_regime(train_rows: int, val_rows: int, test_rows: int = 0) -> dict:
    """``{name, why, early_stopping}`` for a dataset split into these many rows. ``name``: ``tiny`` (nothing
    held out), ``small``, ``medium`` or ``large`` (the recipe's tiers by training rows); ``early_stopping``:
    whether validation has rows enough to stop on."""
    total = train_rows + val_rows + test_rows
    if total < TINY_ROWS or (val_rows == 0 and test_rows == 0):
        return {"name": "tiny", "early_stopping": False,
                "why": f"{total} rows: nothing is held out, so there is no honest test of what the model learned "
                       f"(from {TINY_ROWS} rows up, validation and test rows are kept aside)"}
    name = recipe_tier(train_rows)
    r = RECIPES[name]
    recipe = f"rank {r['lora_r']}, learning rate {r['lr']:g}, {r['epochs']} epochs"
    trusted = val_rows >= TRUSTED_VAL_ROWS
    stopping = (f"early stopping and the best checkpoint follow its {val_rows} validation rows" if trusted else
                f"its {val_rows} validation rows are too few to stop on (a row more or less decides), so training "
                f"runs its planned steps and keeps the last (early stopping needs {TRUSTED_VAL_ROWS} or more)")
    return {"name": name, "early_stopping": trusted,
            "why": f"{train_rows:,} training rows: {recipe} for LoRA; {stopping}"}
