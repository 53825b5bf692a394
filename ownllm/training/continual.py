"""Continual learning, the guide's 增量训练: new rows trained on top of a finished run.

``ownllm train --resume RUN --data NEW_FILE [--additional-epochs N]``. The run's finished stage moves
whole into ``RUN/stages/N/`` (adapter, checkpoints, data, summary, report card, exports): nothing it
made is lost, and its test split stays where the report card reads it, beside the new one. The new
stage starts from the earlier adapter and trains the new rows with earlier training rows replayed
beside them (rehearsed as ordinary rows, so the earlier facts are not overwritten); early stopping
and the best checkpoint follow the new validation rows (with the earlier ones beside them, the earlier
rows' low, flat loss stopped the stage before it had learned the new facts: 33% of the second half's
test questions against 56% for a run on them alone, RESULTS.md). New training rows
that repeat an earlier test or validation question are left out, so the earlier test still measures
phrasings the model never trained on.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil

from ownllm.errors import ConfigError, OwnLLMError

# Earlier training rows replayed per new training row (all of them when there are fewer): rehearsal,
# the plain remedy for forgetting in continual fine-tuning, at the cost of training up to twice the rows.
# benchmarks/forgetting.py --continual-only measures what it keeps (RESULTS.md).
EARLIER_REPLAY_RATIO = 1.0
STAGE_ENTRIES = ("adapter", "checkpoints", "data", "eval", "export", "train_summary.json", "metrics.jsonl",
                 "loss.png", "tensorboard", "status.json")
ADAPTER_METHODS = ("lora", "dora", "qlora", "prefix")


def start_stage(run_dir: str, new_data: str, cfg, additional_epochs: float | None = None):
    """Archive the finished stage of ``run_dir`` and prepare the next one on ``new_data``; returns the
    config the new stage trains with and what the summary records about it. ``cfg``: the run's config."""
    from ownllm.data.dedup import find_leaks
    from ownllm.data.prepare import load_prepared, prepare_dataset
    from ownllm.rundir import earlier_stages

    if cfg.method not in ADAPTER_METHODS:
        raise ConfigError(f"--resume --data continues an adapter; {run_dir} is a {cfg.method} fine-tune",
                          hint=f"train a new run on top of it: ownllm train --model {os.path.join(run_dir, 'model')} "
                               f"--data {new_data}")
    adapter = os.path.join(run_dir, "adapter")
    if not os.path.exists(os.path.join(adapter, "adapter_config.json")):
        raise OwnLLMError(f"{run_dir} has not finished training (no adapter/ in it)",
                          hint=f"finish it first: ownllm train --resume {run_dir}")
    if additional_epochs is not None and additional_epochs <= 0:
        raise ConfigError(f"--additional-epochs must be > 0 (got {additional_epochs})")
    earlier = load_prepared(run_dir)
    common = dict(model=cfg.model, template=cfg.template, max_seq_len=cfg.max_seq_len, seed=cfg.seed)
    # the new file, prepared in memory as `ownllm train --data` would (nothing moves before this passes)
    new = prepare_dataset([new_data], system=cfg.system, split=cfg.split, **common)
    leaked = {i for i, _ in find_leaks(new.train, earlier.test + earlier.val)}
    fresh = [r for i, r in enumerate(new.train) if i not in leaked]
    if not fresh:
        raise OwnLLMError(f"{new_data} has no training rows that are not already in {run_dir}'s test or "
                          "validation split")
    rng = random.Random(cfg.seed)
    replayed = rng.sample(earlier.train, min(len(earlier.train), math.ceil(EARLIER_REPLAY_RATIO * len(fresh))))
    stage = len(earlier_stages(run_dir)) + 1
    archive = os.path.join(run_dir, "stages", str(stage))
    staging = os.path.join(run_dir, "stages", f".preparing-{stage}")
    shutil.rmtree(staging, ignore_errors=True)
    # rows that are already prepared: no second system prompt, no second dedup against each other's splits
    prepare_dataset(fresh + replayed, out=staging, split="1,0,0", val=new.val, test=new.test,
                    dedup="off", **common)
    os.makedirs(archive)
    for entry in STAGE_ENTRIES:
        if os.path.exists(os.path.join(run_dir, entry)):
            os.replace(os.path.join(run_dir, entry), os.path.join(archive, entry))
    shutil.copy2(os.path.join(run_dir, "config.yaml"), os.path.join(archive, "config.yaml"))
    os.replace(os.path.join(staging, "data"), os.path.join(run_dir, "data"))
    shutil.rmtree(staging, ignore_errors=True)
    info = {"stage": stage + 1, "new_data": os.fspath(new_data), "earlier_stages": [
        os.path.relpath(s, run_dir) for s in earlier_stages(run_dir)], "new_train_rows": len(fresh),
        "replayed_earlier_rows": len(replayed), "left_out_as_earlier_test_or_val": len(leaked),
        "val_rows": len(new.val), "test_rows": len(new.test),
        "started_from": os.path.join(archive, "adapter")}
    next_cfg = dataclasses.replace(cfg, data=run_dir, out=run_dir, init_adapter=os.path.join(archive, "adapter"),
                                   max_steps=None, epochs=_epochs(additional_epochs) or cfg.epochs)
    return next_cfg, info


def _epochs(value: float | None):
    return int(value) if value and float(value).is_integer() else value
