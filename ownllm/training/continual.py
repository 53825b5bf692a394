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
ADAPTER_METHODS = ("lora", "dora", "qlora", "prefix")


def start_stage(run, new_data: str, cfg, additional_epochs: float | None = None):
    """Archive the finished stage of the run directory ``run`` (a ``RunDir``) and prepare the next one on
    ``new_data``; returns the config the new stage trains with and what the summary records about it.
    ``cfg``: the run's config."""
    from ownllm.data.dedup import find_leaks
    from ownllm.data.prepare import load_prepared, prepare_dataset
    from ownllm.rundir import STAGE_ENTRIES, adapter_in

    from ownllm.training.config import PREFERENCE_METHODS

    run_dir = run.path
    judged = cfg.method in PREFERENCE_METHODS
    was = _run_method(run) if judged else cfg.method
    if was not in ADAPTER_METHODS + PREFERENCE_METHODS:
        raise ConfigError(f"--resume --data continues an adapter; {run_dir} is a {was} fine-tune",
                          hint=f"train a new run on top of it: ownllm train --model {run.model_dir} "
                               f"--data {new_data}")
    if adapter_in(run.adapter_dir) is None:
        raise OwnLLMError(f"{run_dir} has not finished training (no adapter/ in it)",
                          hint=f"finish it first: ownllm train --resume {run_dir}")
    if additional_epochs is not None and additional_epochs <= 0:
        raise ConfigError(f"--additional-epochs must be > 0 (got {additional_epochs})")
    earlier = load_prepared(run_dir)
    from ownllm.training.data import prepare_options

    common = dict(model=cfg.model, template=cfg.template, max_seq_len=cfg.max_seq_len, seed=cfg.seed)
    # the new file, prepared in memory as `ownllm train --data` would (nothing moves before this passes)
    options = prepare_options(cfg)
    if judged:  # judged answers come in their own format (feedback, pairs, labels): the run's column mapping is not theirs
        options = {k: v for k, v in options.items() if k not in ("columns", "format")}
    new = prepare_dataset([new_data], split=cfg.split, **options)
    others = _other_models(run, new) if judged else 0
    leaked = {i for i, _ in find_leaks(new.train, earlier.test + earlier.val)}
    fresh = [r for i, r in enumerate(new.train) if i not in leaked]
    if not fresh:
        raise OwnLLMError(f"{new_data} has no training rows that are not already in {run_dir}'s test or "
                          "validation split")
    rng = random.Random(cfg.seed)
    # a preference stage learns judgements only: its reference (the stage before) keeps what was learned
    replayed = [] if judged else rng.sample(earlier.train, min(len(earlier.train),
                                                               math.ceil(EARLIER_REPLAY_RATIO * len(fresh))))
    stage = len(run.earlier_stages()) + 1
    archive = run.stage(stage)
    staging = run.preparing_stage(stage)
    shutil.rmtree(staging.path, ignore_errors=True)
    # rows that are already prepared: no second system prompt, no second dedup against each other's splits
    # (a new file of under 10 rows holds nothing out: no val or test to pass on)
    prepare_dataset(fresh + replayed, out=staging.path, split="1,0,0", val=new.val or None, test=new.test or None,
                    dedup="off", **common)
    os.makedirs(archive.path)
    for entry in STAGE_ENTRIES:
        if os.path.exists(run.entry(entry)):
            os.replace(run.entry(entry), archive.entry(entry))
    shutil.copy2(run.config_yaml, archive.config_yaml)
    os.replace(staging.data_dir, run.data_dir)
    shutil.rmtree(staging.path, ignore_errors=True)
    info = {"stage": stage + 1, "new_data": os.fspath(new_data), "earlier_stages": [
        os.path.relpath(s.path, run_dir) for s in run.earlier_stages()], "new_train_rows": len(fresh),
        "replayed_earlier_rows": len(replayed), "left_out_as_earlier_test_or_val": len(leaked),
        "val_rows": len(new.val), "test_rows": len(new.test), "judged_answers_of_other_models": others,
        "started_from": archive.adapter_dir}
    next_cfg = dataclasses.replace(cfg, data=run_dir, out=run_dir, init_adapter=archive.adapter_dir,
                                   max_steps=None, epochs=_epochs(additional_epochs) or cfg.epochs)
    return next_cfg, info


def _other_models(run, new) -> int:
    """Rows of ``new`` (feedback) that judged answers of other weights than the run's current adapter: counted
    and said, not dropped (an earlier stage's answers may still be worth learning from)."""
    import sys

    from ownllm.data.feedback import model_id

    current = model_id(run.path)
    rows = new.train + new.val + new.test
    other = sum(1 for r in rows if isinstance(r.get("model"), str) and r["model"] != current)
    if other:
        print(f"ownllm: {other} of {len(rows)} judged answers were written by other weights than {run.path}'s "
              f"adapter ({current}): an earlier stage or another model; they are learned from all the same",
              file=sys.stderr)
    return other


def _run_method(run) -> str:
    """The method the run directory's config.yaml records (what its adapter is)."""
    from ownllm.config import load_yaml
    from ownllm.training.config import TrainConfig

    return load_yaml(run.config_yaml, TrainConfig).method


def _epochs(value: float | None):
    return int(value) if value and float(value).is_integer() else value
