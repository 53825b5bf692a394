"""The guide's ``Trainer``: ``Trainer(model=..., train_dataset=..., args={...}).train()``.

setup (config, data, model, method) → train (transformers.Trainer) → cleanup (adapter/model,
summary, plot). Everything lands in one run directory.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from ownllm.config import save_yaml
from ownllm.training.config import TrainConfig
from ownllm.errors import ConfigError
from ownllm.training.data import TrainData, resolve_data
from ownllm.training.defaults import map_guide_args, resolve_defaults


class Trainer:
    """Fine-tune ``model`` on ``train_dataset``.

    ``model``: alias / folder / .gguf / hub id, or an already loaded ``OwnModel`` (default:
    ``config.model``, i.e. the embedded smollm2-135m).
    ``train_dataset``: a file or folder, a run directory prepared by ``ownllm data prepare``,
    ``prepare_dataset``'s result, a 🤗 ``Dataset``/``DatasetDict`` (a ``text`` column works, as in
    the guide) or a list of dicts. ``args``: 🤗 ``TrainingArguments`` names (learning_rate,
    per_device_train_batch_size, ...) and ownllm's own settings (method, lora_r, ...).
    """

    def __init__(self, model=None, train_dataset=None, eval_dataset=None, args: dict | None = None,
                 config: TrainConfig | None = None, **kwargs):
        cfg = config or TrainConfig()
        updates = map_guide_args({**(args or {}), **kwargs})
        self._loaded = None
        if model is not None and not isinstance(model, (str, os.PathLike)):
            self._loaded = model  # an OwnModel from load_model()
            updates.setdefault("model", getattr(model, "name", "") or cfg.model)
        elif model is not None:
            updates.setdefault("model", os.fspath(model))
        if isinstance(train_dataset, (str, os.PathLike)):
            updates.setdefault("data", os.fspath(train_dataset))
        self.config = dataclasses.replace(cfg, **updates).validate()
        self.run_dir = self.config.out or _default_run_dir(self.config)
        self.config.out = self.run_dir
        self._train_dataset = train_dataset if train_dataset is not None else self.config.data
        self._eval_dataset = eval_dataset
        if self._train_dataset is None:
            raise ConfigError("no training data was given", hint="pass train_dataset=... or --data FILE")
        self._resume: str | None = None
        self._extra: tuple[int, float] | None = None
        self.summary: dict | None = None
        self.continual: dict | None = None  # what continue_with() started: train_summary.json's "continual"
        self.model = None
        self.tokenizer = None

    # -- the guide's API ---------------------------------------------------------------------
    def resume_from_checkpoint(self, checkpoint: str | None = None) -> "Trainer":
        """Continue from ``checkpoint`` (a path, or a name like ``checkpoint-100`` in this run) on the
        next ``train()``; ``None`` picks the latest complete checkpoint."""
        from ownllm.training.hf import last_checkpoint

        ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        if checkpoint is None:
            path = last_checkpoint(ckpt_dir)
        else:
            path = checkpoint if os.path.isdir(checkpoint) else os.path.join(ckpt_dir, checkpoint)
        if not path or not os.path.exists(os.path.join(path, "trainer_state.json")):
            found = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
            raise ConfigError(f"checkpoint not found: {checkpoint or '(latest)'} in {ckpt_dir}",
                              hint=f"available: {', '.join(found) or 'none'}")
        self._resume = path
        return self

    def train(self, additional_epochs: float | None = None, resume_from_checkpoint: str | None = None) -> dict:
        """Train; returns the summary (also in ``train_summary.json``).

        ``additional_epochs``: this many more epochs from the checkpoint being resumed (the latest one
        when none was chosen), not "until epoch N".
        """
        from ownllm.training.loop import run_training

        if resume_from_checkpoint:
            self.resume_from_checkpoint(resume_from_checkpoint)
        if additional_epochs is not None:
            if additional_epochs <= 0:
                raise ConfigError(f"additional_epochs must be > 0 (got {additional_epochs})")
            if self._resume is None:
                self.resume_from_checkpoint(None)
            with open(os.path.join(self._resume, "trainer_state.json"), encoding="utf-8") as f:
                state = json.load(f)
            # Turned into an exact step count once the data (steps per epoch) is known.
            self._extra = (int(state.get("global_step") or 0), float(additional_epochs))
        data = self._data()
        try:
            self.summary = run_training(self, data)
        finally:
            self._resume, self._extra = None, None
        return self.summary

    def continue_with(self, new_data, additional_epochs: float | None = None) -> dict:
        """Continual learning (增量训练): train ``new_data`` (a file or folder) on top of this finished run.
        The finished stage moves into ``stages/N/`` of the run directory (nothing is lost, its test split
        stays scored by the report card); the new stage starts from its adapter, replays earlier training
        rows beside the new ones and trains ``additional_epochs`` (default: the run's epochs, early stopping
        deciding). Returns the summary, like ``train()``."""
        from ownllm.training.continual import start_stage

        self.config, self.continual = start_stage(self.run_dir, new_data, self.config, additional_epochs)
        self._train_dataset, self._eval_dataset, self._resume, self._extra = self.run_dir, None, None, None
        return self.train()

    # -- setup helpers -----------------------------------------------------------------------
    def _data(self) -> TrainData:
        from ownllm.training import distributed

        if distributed.is_main():
            data = resolve_data(self._train_dataset, self._eval_dataset, self.config, self.run_dir)
            distributed.barrier()
        else:  # the main process prepares the data into the run directory; the others read it
            distributed.barrier()
            data = resolve_data(self.run_dir if not _prepared_input(self._train_dataset) else self._train_dataset,
                                None, self.config, self.run_dir)
        self.config = resolve_defaults(self.config, len(data.train))
        return data

    def save_config(self) -> None:
        from ownllm.training import distributed

        if not distributed.is_main():
            return
        header = f"# Reproduce this run: ownllm train {os.path.join(self.run_dir, 'config.yaml')}\n"
        save_yaml(self.config, os.path.join(self.run_dir, "config.yaml"), header)


def _prepared_input(train) -> bool:
    from ownllm.data.prepare import PreparedData

    return isinstance(train, PreparedData) or (
        isinstance(train, (str, os.PathLike)) and os.path.exists(os.path.join(train, "data", "train.jsonl")))


def _default_run_dir(cfg: TrainConfig) -> str:
    if cfg.data:
        base = os.path.basename(os.path.normpath(cfg.data))
        if os.path.isdir(os.path.join(cfg.data, "data")):
            return cfg.data  # a prepared run directory trains in place
        return os.path.join("runs", os.path.splitext(base)[0])
    return os.path.join("runs", time.strftime("run-%Y%m%d-%H%M%S"))

