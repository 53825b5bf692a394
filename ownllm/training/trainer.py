"""The guide's ``Trainer``: ``Trainer(model=..., train_dataset=..., args={...}).train()``.

``train()`` runs the same stages as ``ownllm quickstart``, the CLI and the studio: prepare
(``training.data.prepare_for_training``) → plan (``training.plan.plan_run``, plan.json) → train
(``training.train.train_run``). Everything lands in one run directory.
"""
from __future__ import annotations

import dataclasses
import os

from ownllm.errors import ConfigError
from ownllm.rundir import RunDir
from ownllm.training.config import TrainConfig
from ownllm.training.defaults import map_guide_args


class Trainer:
    """Fine-tune ``model`` on ``train_dataset``.

    ``model``: alias / folder / .gguf / hub id, or an already loaded ``OwnModel`` (default:
    ``config.model``, i.e. the embedded smollm2-135m).
    ``train_dataset``: a file or folder, a run directory prepared by ``ownllm data prepare``,
    ``prepare_dataset``'s result, a 🤗 ``Dataset``/``DatasetDict`` (a ``text`` column works, as in
    the guide) or a list of dicts. ``args``: 🤗 ``TrainingArguments`` names (learning_rate,
    per_device_train_batch_size, ...) and ownllm's own settings (method, lora_r, ...).

    After ``train()``: ``summary`` (as train_summary.json), ``plan`` (as plan.json), ``model`` and
    ``tokenizer`` (the trained model, in memory) and ``config`` (the settings it trained with).
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
        self.run = RunDir(self.config.out) if self.config.out else RunDir.default_for(self.config.data)
        self.config.out = self.run.path
        self._train_dataset = train_dataset if train_dataset is not None else self.config.data
        self._eval_dataset = eval_dataset
        if self._train_dataset is None:
            raise ConfigError("no training data was given", hint="pass train_dataset=... or --data FILE")
        self._resume: str | None = None
        self._continual: dict | None = None  # what continue_with() started: train_summary.json's "continual"
        self.summary: dict | None = None
        self.tune_result = None  # after tune(): every trial and the best
        self.plan = None
        self.model = None
        self.tokenizer = None

    @property
    def run_dir(self) -> str:
        return self.run.path

    # -- the guide's API ---------------------------------------------------------------------
    def resume_from_checkpoint(self, checkpoint: str | None = None) -> "Trainer":
        """Continue from ``checkpoint`` (a path, or a name like ``checkpoint-100`` in this run) on the
        next ``train()``; ``None`` picks the latest complete checkpoint."""
        from ownllm.training.hf import last_checkpoint

        if checkpoint is None:
            path = last_checkpoint(self.run.checkpoints_dir)
        else:
            path = checkpoint if os.path.isdir(checkpoint) else self.run.checkpoint(checkpoint)
        if not path or not os.path.exists(os.path.join(path, "trainer_state.json")):
            folder = self.run.checkpoints_dir
            found = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            raise ConfigError(f"checkpoint not found: {checkpoint or '(latest)'} in {folder}",
                              hint=f"available: {', '.join(found) or 'none'}")
        self._resume = path
        return self

    def train(self, additional_epochs: float | None = None, resume_from_checkpoint: str | None = None) -> dict:
        """Prepare → plan → train; returns the summary (also in ``train_summary.json``).

        ``additional_epochs``: this many more epochs from the checkpoint being resumed (the latest one
        when none was chosen), not "until epoch N".
        """
        from ownllm.training.data import prepare_for_training
        from ownllm.training.plan import plan_run
        from ownllm.training.config import PREFERENCE_METHODS
        from ownllm.training.preference import preference_run
        from ownllm.training.train import train_run

        if resume_from_checkpoint:
            self.resume_from_checkpoint(resume_from_checkpoint)
        if additional_epochs is not None:
            if additional_epochs <= 0:
                raise ConfigError(f"additional_epochs must be > 0 (got {additional_epochs})")
            if self._resume is None:
                self.resume_from_checkpoint(None)
        resume, self._resume = self._resume, None
        data = prepare_for_training(self._train_dataset, self.config, self.run, self._eval_dataset)
        self.plan = plan_run(self.config, data, self.run, strict=False)
        self.config = self.plan.settings
        if self.config.method in PREFERENCE_METHODS:
            if resume or additional_epochs is not None or self._loaded is not None:
                raise ConfigError(f"--method {self.config.method} trains a new stage from a finished run or a base "
                                  "model: it does not go on from a checkpoint, add epochs to one, or train a model "
                                  "passed in memory", hint="ownllm train --resume RUN --data FEEDBACK.jsonl --method kto")
            result = preference_run(self.config, data, self.run, continual=self._continual)
        else:
            result = train_run(self.config, data, self.run, model=self._loaded, resume=resume,
                               additional_epochs=additional_epochs, continual=self._continual)
        self.summary, self.model, self.tokenizer = result.summary, result.model, result.tokenizer
        return self.summary

    def tune(self, trials: int | None = None, time_budget: str | None = None, prune: bool = True) -> dict:
        """自动化微调 (automatic tuning): search learning rate, LoRA rank, epochs and protection strength within
        ``time_budget`` (e.g. "30m"; default: the config's) or over ``trials`` trials, each a training run on
        this run's own validation rows (``ownllm.training.tune``); the best trial becomes this run. Returns its
        summary; ``tune_result`` holds every trial (``tune_result.table()`` prints them) and ``config`` the
        chosen settings. ``model``/``tokenizer`` stay None: load the run with ``load_model(run_dir)``."""
        from ownllm.training.data import prepare_for_training
        from ownllm.training.tune import TuneConfig, tune_run

        if time_budget is not None:
            self.config = dataclasses.replace(self.config, time_budget=time_budget).validate()
        data = prepare_for_training(self._train_dataset, self.config, self.run, self._eval_dataset)
        self.tune_result = tune_run(self.config, data, self.run, TuneConfig(trials=trials, no_prune=not prune))
        self.config = dataclasses.replace(self.config, **self.tune_result.best["params"], time_budget=None)
        self.summary = self.tune_result.summary
        return self.summary

    def continue_with(self, new_data, additional_epochs: float | None = None) -> dict:
        """Continual learning (增量训练): train ``new_data`` (a file or folder) on top of this finished run.
        The finished stage moves into ``stages/N/`` of the run directory (nothing is lost, its test split
        stays scored by the report card); the new stage starts from its adapter, replays earlier training
        rows beside the new ones and trains ``additional_epochs`` (default: the run's epochs, early stopping
        deciding). Returns the summary, like ``train()``."""
        from ownllm.training.continual import start_stage

        self.config, self._continual = start_stage(self.run, new_data, self.config, additional_epochs)
        self._train_dataset, self._eval_dataset, self._resume = self.run.path, None, None
        return self.train()
