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
    """Append every log to metrics.jsonl; keep the run's history for loss.png and the summary (a resumed run's
    starts from the checkpoint's log history, so its best checkpoint's evaluation is there even when it came
    before the resume)."""

    def __init__(self, path: str):
        self.path = path
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.history = [dict(h) for h in state.log_history]  # empty unless resumed from a checkpoint

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


class StatusFileCallback(TrainerCallback):
    """status.json in the run directory: what a watcher (the studio, a script) needs while training runs.

    pid, step of max steps, tokens/s, time left and memory now, rewritten atomically at most once a
    second; ``state`` is "training" until the end, then "ended". A status that says "training" with a
    pid that no longer runs means the process died.
    """

    def __init__(self, path: str, device: str):
        self.path, self.device = path, device
        self.start = self.last_write = 0.0
        self.first_step = 0
        self.rate = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.time(), state.global_step
        self._write(state, "training", force=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "tokens_per_second" in logs:
            self.rate = float(logs["tokens_per_second"])

    def on_step_end(self, args, state, control, **kwargs):
        self._write(state, "training")

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, "ended", force=True)

    def _write(self, state, phase: str, force: bool = False) -> None:
        now = time.time()
        if not state.is_world_process_zero or (not force and now - self.last_write < 1.0):
            return
        self.last_write = now
        done = state.global_step - self.first_step
        left = max(0, state.max_steps - state.global_step)
        eta = (now - self.start) / done * left if done > 0 else None
        status = {"state": phase, "pid": os.getpid(), "step": state.global_step, "max_steps": state.max_steps,
                  "epoch": round(state.epoch or 0, 3), "started": round(self.start, 1), "updated": round(now, 1),
                  "tokens_per_second": self.rate, "eta_seconds": None if eta is None else round(eta, 1),
                  "memory_mb": _memory_now_mb(self.device)}
        from ownllm.utils import atomic_write

        atomic_write(self.path, json.dumps(status))


def _memory_now_mb(device: str) -> dict:
    """Resident memory of this process now and, on a GPU, the memory allocated there."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["cpu_rss"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:  # not Linux: the peak is what the standard library offers
        import resource

        out["cpu_rss_peak"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.startswith("cuda"):
        import torch

        out["gpu_allocated"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        out["gpu_reserved"] = round(torch.cuda.memory_reserved() / 2**20, 1)
    return out


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
