"""Callbacks on transformers.Trainer: signals, metrics file, progress bar, loss plot."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

from transformers import TrainerCallback


class SignalCallback(TrainerCallback):
    """Ctrl-C / SIGTERM: finish the step, save a checkpoint, stop. A second Ctrl-C exits at once."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.requested is not None:
            print("\nsecond interrupt: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: finishing this step and saving a checkpoint "
              "(press Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class TimeBudgetCallback(TrainerCallback):
    """Stop gracefully (checkpoint, then the usual end of training) when the wall-clock budget is spent."""

    def __init__(self, seconds: float, start: float):
        self.seconds, self.start, self.hit = seconds, start, False

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.start >= self.seconds:
            self.hit = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"  # the last checkpoint gets its val loss
            control.should_training_stop = True
        return control


class MetricsCallback(TrainerCallback):
    """Append every log to metrics.jsonl; keep the history for loss.png and the summary."""

    def __init__(self, path: str):
        self.path = path
        self.history: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in logs.items()})
        self.history.append(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class ProgressCallback(TrainerCallback):
    """One bar: step, loss, tokens/s and time left."""

    def __init__(self):
        self.bar = None
        self.last = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.bar or not logs:
            return
        for key, short in (("loss", "loss"), ("eval_loss", "val"), ("tokens_per_second", "tok/s")):
            if key in logs:
                self.last[short] = f"{logs[key]:.3g}" if key != "tokens_per_second" else f"{logs[key]:.0f}"
        self.bar.set_postfix(self.last, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.close()
            self.bar = None


def plot_losses(history: list[dict], path: str) -> None:
    """loss.png: train and validation loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and math.isfinite(h["loss"])]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#4C72B0")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#C44E52")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
