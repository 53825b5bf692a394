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

from ownllm.data.render import IGNORE
from ownllm.errors import DiskFullError
from ownllm.training.protect import general_drift, kl_sum


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        self.step = step
        super().__init__(f"the loss became NaN/inf at step {step}")


# Model types whose logits are exactly lm_head(final hidden state): no logit scale (Gemma 2's soft-capping is
# a config value, checked below; Gemma 3 sets none).
TRAINED_POSITIONS_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "smollm3"}
CE_CHUNK_ROWS = 2048            # rows of logits materialised at once when the batch has many trained tokens
CE_UNCHUNKED_LIMIT = 64 << 20   # logits elements above which the loss is chunked and recomputed in backward


def supports_trained_positions_loss(model) -> bool:
    """Whether the loss may be computed from the final hidden states at trained positions only."""
    config = getattr(model, "config", None)
    peft = getattr(model, "peft_config", None) or {}
    if any(c.peft_type.value == "PREFIX_TUNING" for c in peft.values()):
        return False  # prefix tuning feeds past key/values, not a plain forward
    return getattr(config, "model_type", None) in TRAINED_POSITIONS_TYPES and model.get_output_embeddings() is not None \
        and getattr(config, "final_logit_softcapping", None) is None


def trained_positions_loss(model, kl_weight: float = 0.0):
    """A ``compute_loss_func`` for transformers' Trainer: the output layer and the cross-entropy run
    only at positions with a label (assistant tokens), instead of over every position as the model's
    own loss does; with many trained tokens the logits are made in chunks that are recomputed in the
    backward pass, so at most ``CE_CHUNK_ROWS`` x vocabulary logits exist at once. Same value as
    transformers' causal-LM loss (shifted labels, sum / num_items_in_batch, else mean).

    The final hidden states come from a forward hook on the decoder, set only inside
    ``loss_fn.capturing()``: asking the model for ``output_hidden_states`` would keep every layer's
    output, and accelerate's mixed precision hands all of them back as fp32 copies. Call the model with
    ``logits_to_keep=no_logits(input_ids)`` so that it makes no logits of its own.

    Forgetting protection (``kl_weight`` > 0): rows marked as replay with ``loss_fn.set_replay(rows,
    base_ids, base_logprobs)`` contribute ``kl_weight`` x KL(base || tuned) at their answer positions
    instead of cross-entropy, against the base model's distributions computed before training (see
    ``ownllm.training.protect``); the sum is divided by the same token count."""
    import contextlib

    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    captured: dict = {}

    def keep_hidden(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    @contextlib.contextmanager
    def capturing():
        handle = model.get_decoder().register_forward_hook(keep_hidden)
        try:
            yield
        finally:
            handle.remove()
            captured.clear()

    def ce_sum(hidden, targets):
        head = model.get_output_embeddings()
        return F.cross_entropy(head(hidden.to(head.weight.dtype)).float(), targets, reduction="sum")

    def loss_fn(outputs, labels, num_items_in_batch=None):
        targets = labels[:, 1:]
        keep = targets != IGNORE
        count = keep.sum() if num_items_in_batch is None else num_items_in_batch
        hidden = captured.pop("hidden")[:, :-1]
        replay, kl = captured.pop("replay", None), None
        if replay is not None:  # (rows, the base model's top ids and log-probs at their answer positions)
            rows, base_ids, base_lp = replay
            head = model.get_output_embeddings()
            kl = kl_sum(head(hidden[keep & rows[:, None]].to(head.weight.dtype)), base_ids, base_lp)
            keep = keep & ~rows[:, None]
        hidden = hidden[keep]
        targets = targets[keep]
        vocab = model.get_output_embeddings().weight.shape[0]
        if hidden.shape[0] * vocab <= CE_UNCHUNKED_LIMIT or not torch.is_grad_enabled():
            total = ce_sum(hidden, targets)
        else:
            total = sum(checkpoint(ce_sum, hidden[i:i + CE_CHUNK_ROWS], targets[i:i + CE_CHUNK_ROWS],
                                   use_reentrant=False) for i in range(0, hidden.shape[0], CE_CHUNK_ROWS))
        if kl is not None:
            total = total + kl_weight * kl
        return total / torch.as_tensor(count, device=total.device).clamp(min=1)

    def set_replay(rows, base_ids, base_logprobs) -> None:
        captured["replay"] = (rows, base_ids, base_logprobs)

    loss_fn.capturing, loss_fn.set_replay, loss_fn.kl_weight = capturing, set_replay, kl_weight
    return loss_fn


def no_logits(input_ids):
    """``logits_to_keep`` for no position at all. (``logits_to_keep=1`` on a half-precision model slices
    a non-contiguous last row, which CPU ``linear`` turns into a batched matmul over a per-row copy of the
    whole output layer: 0.45 s of a 1.9 s step on the embedded model.)"""
    return torch.empty(0, dtype=torch.long, device=input_ids.device)


class HFTrainer(transformers.Trainer):
    def __init__(self, *args, nan_policy: str = "stop", drift: tuple | None = None, **kwargs):
        """``drift``: (replayed rows, the base model's distributions on them, pad id, KL weight): forgetting
        protection's validation, see ``evaluation_loop``."""
        super().__init__(*args, **kwargs)
        self.nan_policy, self.drift = nan_policy, drift
        self.tokens_seen = 0          # non-padding tokens through the model
        self.tokens_computed = 0      # tokens the batches computed, padding included
        self.trained_tokens = 0       # tokens with a label
        self.skipped_nonfinite = 0
        self._since_log = (time.perf_counter(), 0, 0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        replay = inputs.pop("replay", None)
        base_ids, base_lp = inputs.pop("base_ids", None), inputs.pop("base_logprobs", None)
        if self.compute_loss_func is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if base_ids is not None and self.compute_loss_func.kl_weight:
            self.compute_loss_func.set_replay(replay.to(inputs["labels"].device), base_ids, base_lp)
        # the loss needs the final hidden states, not full-vocabulary logits
        with self.compute_loss_func.capturing():
            return super().compute_loss(model, {**inputs, "logits_to_keep": no_logits(inputs["input_ids"])},
                                        return_outputs, num_items_in_batch)

    def evaluation_loop(self, *args, metric_key_prefix: str = "eval", **kwargs):
        """With forgetting protection, validation also scores the drift from the base model on replayed rows
        (``{prefix}_general_drift``, mean KL per answer token) and ``{prefix}_protected_loss``: the domain's
        validation loss plus the KL weight times that drift, what training minimises, per token. Early stopping
        and the best checkpoint follow it, so the run keeps the checkpoint that knows the domain and still
        answers like the base model, not the first one that knows the domain."""
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        loss = output.metrics.get(f"{metric_key_prefix}_loss")
        if self.drift is not None and loss is not None:
            rows, targets, pad_id, weight = self.drift
            drift = general_drift(self.model, rows, targets, pad_id)
            output.metrics[f"{metric_key_prefix}_general_drift"] = round(drift, 5)
            output.metrics[f"{metric_key_prefix}_protected_loss"] = loss + weight * drift
        return output

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.tokens_seen += int(inputs["attention_mask"].sum())
        self.tokens_computed += int(inputs["attention_mask"].numel())
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
            t0, n0, c0 = self._since_log
            now = time.perf_counter()
            if now > t0 and self.tokens_seen > n0:
                logs["tokens_per_second"] = round((self.tokens_seen - n0) / (now - t0), 1)
                # what `ownllm plan --calibrate` fits its time model to
                logs["seconds_since_last_log"] = round(now - t0, 4)
                logs["computed_tokens_since_last_log"] = self.tokens_computed - c0
            self._since_log = (now, self.tokens_seen, self.tokens_computed)
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
        main = self.args.should_save  # with several processes each writes its RNG state; the main one renames
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging, exist_ok=True)
        self.accelerator.wait_for_everyone()
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
        self.accelerator.wait_for_everyone()
        final = os.path.join(run_dir, name)
        if main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        best = self.state.best_global_step  # transformers recorded it under the staging path
        if best and os.path.exists(os.path.join(run_dir, f"checkpoint-{best}")):
            self.state.best_model_checkpoint = os.path.join(run_dir, f"checkpoint-{best}")
        if main:
            self.state.save_to_json(os.path.join(final, "trainer_state.json"))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()


def last_checkpoint(folder: str) -> str | None:
    """The newest complete checkpoint (one whose trainer_state.json exists)."""
    from ownllm.rundir import complete_checkpoints

    found = complete_checkpoints(folder)
    return found[-1] if found else None
