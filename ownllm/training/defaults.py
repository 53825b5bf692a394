"""Defaults that adapt to the dataset, and the guide's ``args`` dict mapped onto TrainConfig."""
from __future__ import annotations

import dataclasses
import difflib

from ownllm.training.config import TrainConfig
from ownllm.errors import ConfigError

# The guide's (transformers') names → ours.
GUIDE_NAMES = {
    "learning_rate": "lr", "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs", "output_dir": "out", "lr_scheduler_type": "scheduler",
    "warmup_steps": "warmup", "warmup_ratio": "warmup", "dropout": "lora_dropout",
}
OURS_TOO = {"max_steps", "weight_decay", "save_steps", "eval_steps", "save_total_limit", "seed", "logging_steps",
            "gradient_checkpointing", "deepspeed"}


def _hf_arg_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def map_guide_args(args: dict) -> dict:
    """Split ``args`` into TrainConfig fields and extra TrainingArguments; reject unknown names."""
    ours = {f.name for f in dataclasses.fields(TrainConfig)}
    updates, hf, unknown = {}, {}, []
    hf_names = None
    for key, value in args.items():
        if key in GUIDE_NAMES:
            updates[GUIDE_NAMES[key]] = value
        elif key in ours:
            updates[key] = value
        elif key in ("fp16", "bf16"):
            if value:
                updates["precision"] = key
        else:
            hf_names = hf_names or _hf_arg_names()
            if key in hf_names:
                hf[key] = value
            else:
                unknown.append(key)
    if unknown:
        valid = sorted(ours | set(GUIDE_NAMES) | (hf_names or _hf_arg_names()))
        raise ConfigError([f"unknown training argument '{k}'" + _close(k, valid) for k in unknown])
    if hf:
        updates["hf_args"] = {**(updates.get("hf_args") or {}), **hf}
    return updates


def _close(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


MIN_STEPS = 100  # a run of fewer optimizer steps than this halves its micro-batch (benchmarks/small_data.py)


def small_data_batch(cfg: TrainConfig, n_train: int, epochs: float) -> int:
    """The micro-batch: 8, or 4 where 8 would give the run fewer than ``MIN_STEPS`` optimizer steps (replayed
    rows counted). The same tokens, twice the updates: on a 40-row fictional domain (13 facts, held-out
    phrasings, RESULTS.md "Small datasets") batch 8 made 60 steps and answered 11 of 13, batch 4 120 steps
    and 13 of 13, in about the same time."""
    import math

    from ownllm.training.protect import replay_for_plan

    if cfg.max_steps:
        return 8
    rows = n_train + replay_for_plan(cfg.protect, cfg.method, n_train)
    return 8 if math.ceil(rows / 8) * float(epochs) >= MIN_STEPS else 4


def resolve_defaults(cfg: TrainConfig, n_train: int, n_val: int | None = None) -> TrainConfig:
    """Fill the settings left to us from the method and the number of training (and validation) rows: the
    dataset's size regime (``data.regime.size_regime``).

    Measured on the embedded 135M model: the usual LoRA recipe (r 16, lr 2e-4, 3 epochs) lowers
    the loss on a few hundred Q&A rows but does not teach the facts; rank 64, lr 1e-3 and more
    epochs do. Early stopping on validation loss decides when to stop where validation has rows
    enough (``TRUSTED_VAL_ROWS``); below that the run trains its planned steps.
    """
    from ownllm.data.regime import RECIPES, TRUSTED_VAL_ROWS, recipe_tier
    from ownllm.training.config import PREFERENCE_METHODS
    from ownllm.training.preference import resolve

    if cfg.method in PREFERENCE_METHODS:
        return resolve(cfg, n_train)
    tier = recipe_tier(n_train)
    recipe = RECIPES[tier]
    lora_like = cfg.method in ("lora", "qlora", "dora")
    lr = cfg.lr
    if lr is None:
        lr = {"full": 3e-5, "prefix": 1e-2}.get(cfg.method, recipe["lr"])
    r = cfg.lora_r or recipe["lora_r"]
    alpha = cfg.lora_alpha or (r if tier == "small" else 2 * r)
    epochs = cfg.epochs or recipe["epochs"]
    batch = cfg.batch_size or small_data_batch(cfg, n_train, epochs)
    accum = cfg.grad_accum
    if accum is None:  # the guide's 4, fewer when that would leave under ~16 optimizer steps per epoch
        accum = max(1, min(4, n_train // (batch * 16)))
    patience = cfg.early_stopping_patience
    if patience is None:
        patience = 3 if n_val is None or n_val >= TRUSTED_VAL_ROWS else 0
    return dataclasses.replace(cfg, lr=lr, lora_r=r if lora_like else cfg.lora_r, early_stopping_patience=patience,
                               batch_size=batch,
                               lora_alpha=alpha if lora_like else cfg.lora_alpha, epochs=epochs, grad_accum=accum)
