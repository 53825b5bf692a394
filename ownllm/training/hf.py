"""The thin ``transformers.Trainer`` subclass: atomic checkpoints, NaN guard, token counting."""
from __future__ import annotations

import errno
import math
import os
import shutil
import time

import torch
import transformers
from transformers.trainer_utils import rotate_checkpoints

from ownllm.errors import DiskFullError

IGNORE = -100


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        self.step = step
        super().__init__(f"the loss became NaN/inf at step {step}")


def pad_collator(pad_id: int):
    """Pad a list of {input_ids, labels} to the longest row; labels padded with -100."""

    def collate(rows):
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


class HFTrainer(transformers.Trainer):
    def __init__(self, *args, nan_policy: str = "stop", **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_policy = nan_policy
        self.tokens_seen = 0          # non-padding tokens through the model
        self.trained_tokens = 0       # tokens with a label
        self.skipped_nonfinite = 0
        self._since_log = (time.perf_counter(), 0)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.tokens_seen += int(inputs["attention_mask"].sum())
        self.trained_tokens += int((inputs["labels"] != IGNORE).sum())
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            if self.nan_policy == "skip":
                model.zero_grad(set_to_none=True)
                self.skipped_nonfinite += 1
                return torch.zeros_like(loss)
            raise NonFiniteLoss(self.state.global_step + 1)
        return loss

    def log(self, logs, start_time=None):
        if "loss" in logs:
            t0, n0 = self._since_log
            now = time.perf_counter()
            if now > t0 and self.tokens_seen > n0:
                logs["tokens_per_second"] = round((self.tokens_seen - n0) / (now - t0), 1)
            self._since_log = (now, self.tokens_seen)
            if not math.isfinite(logs["loss"]):
                logs["loss"] = float("nan")
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint into a staging folder, then rename it into place.

        transformers writes checkpoint-N in place, so a crash mid-save would leave a broken
        'latest' checkpoint; here the previous ones stay untouched until the new one is whole.
        """
        run_dir = self.args.output_dir
        staging = os.path.join(run_dir, ".staging")
        name = f"checkpoint-{self.state.global_step}"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging, exist_ok=True)
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            if e.errno == errno.ENOSPC:
                raise DiskFullError(f"the disk filled up while saving {name} in {run_dir}",
                                    hint="free some space; the previous checkpoints are intact, resume with "
                                         "`ownllm train --resume RUN_DIR`") from e
            raise
        finally:
            self.args.output_dir = run_dir
        final = os.path.join(run_dir, name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(os.path.join(staging, name), final)
        shutil.rmtree(staging, ignore_errors=True)
        best = self.state.best_global_step
        if best and os.path.exists(os.path.join(run_dir, f"checkpoint-{best}")):
            self.state.best_model_checkpoint = os.path.join(run_dir, f"checkpoint-{best}")
        if self.args.should_save:
            self.state.save_to_json(os.path.join(final, "trainer_state.json"))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)


def last_checkpoint(folder: str) -> str | None:
    """The newest complete checkpoint (one whose trainer_state.json exists)."""
    if not os.path.isdir(folder):
        return None
    found = [(int(d.split("-")[1]), os.path.join(folder, d)) for d in os.listdir(folder)
             if d.startswith("checkpoint-") and d.split("-")[1].isdigit()
             and os.path.exists(os.path.join(folder, d, "trainer_state.json"))]
    return max(found)[1] if found else None
