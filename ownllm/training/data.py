"""Whatever the user passed as data → prepared rows in the run directory → tokenized datasets."""
from __future__ import annotations

import os

from ownllm.errors import DataError


def _is_dataset_dict(obj) -> bool:
    return hasattr(obj, "keys") and hasattr(obj, "column_names") and isinstance(getattr(obj, "column_names"), dict)


def prepare_options(cfg) -> dict:
    """The prepare stage's options (``PrepareConfig`` fields) for a ``TrainConfig``: its ``prepare`` section
    (config.yaml's ``prepare:``), with the settings training shares with it (model, system prompt, template,
    sequence length, seed) taken from the training settings themselves."""
    shared = dict(model=cfg.model, system=cfg.system, template=cfg.template, max_seq_len=cfg.max_seq_len, seed=cfg.seed)
    return {**{k: v for k, v in (cfg.prepare or {}).items() if k not in ("split",)}, **shared}


def prepare_for_training(train, cfg, run, eval_data=None):
    """The prepare stage as training calls it: whatever the person gave as data — a file or folder, a run
    directory prepared by ``ownllm data prepare``, ``prepare_dataset``'s result, a 🤗 Dataset/DatasetDict or a
    list of rows — checked, cleaned and split into ``run``'s data/ (a prepared run is read back as it is).
    Returns the ``PreparedData``. Several processes: the main one prepares, the others read what it wrote."""
    from ownllm.data.prepare import PreparedData, load_prepared
    from ownllm.rundir import RunDir
    from ownllm.training import distributed

    if distributed.is_main():
        data = _prepare(train, eval_data, cfg, run)
        distributed.barrier()
    elif isinstance(train, PreparedData):
        distributed.barrier()
        data = train
    else:
        distributed.barrier()
        given = isinstance(train, (str, os.PathLike)) and RunDir(train).is_prepared()
        data = load_prepared(train if given else run.path)
    if not data.train:
        raise DataError("there are no training rows")
    return data


def _prepare(train, eval_data, cfg, run):
    from ownllm.data.prepare import PreparedData, load_prepared, prepare_dataset
    from ownllm.rundir import RunDir

    common = prepare_options(cfg)
    if isinstance(train, (str, os.PathLike)) and RunDir(train).is_prepared():
        return load_prepared(os.fspath(train))
    if isinstance(train, PreparedData):
        return train
    if _is_dataset_dict(train):
        split = {k: list(train[k]) for k in train.keys()}
        eval_rows = split.get("validation") or split.get("val") or _rows_or_path(eval_data)
        return _prepare_rows(split.get("train") or [], eval_rows, split.get("test"), cfg, run.path, common)
    if isinstance(train, (str, os.PathLike)):
        split = cfg.split if eval_data is None else "1,0,0"
        return prepare_dataset([os.fspath(train)], out=run.path, split=split, val=_rows_or_path(eval_data), **common)
    return _prepare_rows(list(train), _rows_or_path(eval_data), None, cfg, run.path, common)


def _rows_or_path(data):
    """The person's evaluation data as prepare_dataset takes it: a path, or its rows in memory."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return data
    return list(data)


def _prepare_rows(train_rows, eval_rows, test_rows, cfg, run_dir, common):
    """In-memory rows: checked, cleaned and checked for leakage like files. Without validation rows,
    10% are held out so that early stopping has a validation loss to watch."""
    from ownllm.data.prepare import prepare_dataset

    if not train_rows:
        raise DataError("the training dataset is empty")
    return prepare_dataset(train_rows, out=run_dir, split="1,0,0" if eval_rows else "0.9,0.1,0",
                           val=eval_rows or None, test=test_rows or None, **common)


def tokenize(rows: list, tokenizer, cfg, what: str = "training"):
    """Rows → (a 🤗 Dataset of input_ids/labels, rows dropped): rows left with no trained token are
    dropped; when that is every row, a DataError says what length they need."""
    from datasets import Dataset

    from ownllm.models.templates import chat_template_for
    from ownllm.data.render import render_row

    template = chat_template_for(tokenizer, cfg.template)
    ids, labels, full = [], [], []
    for row in rows:
        r = render_row(row, tokenizer, template=template, max_seq_len=cfg.max_seq_len,
                       train_on_prompt=cfg.train_on_prompt)
        full.append(r.full_length)
        if r.trained_tokens == 0:
            continue
        ids.append(r.input_ids)
        labels.append(r.labels)
    if rows and not ids:
        from ownllm.data.report import percentile

        full.sort()
        need = percentile(full, 0.95)
        raise DataError(f"all {len(rows)} {what} rows were truncated to nothing to learn at --max-seq-len "
                        f"{cfg.max_seq_len}: every answer starts after that many tokens",
                        hint=f"the rows are {full[0]}–{full[-1]} tokens long; --max-seq-len {need} keeps 95% of "
                             f"them whole (see the token lengths in data/report.md)")
    return Dataset.from_dict({"input_ids": ids, "labels": labels}), len(rows) - len(ids)


def pad_collator(pad_id: int, replay_targets: list | None = None):
    """Pad a list of {input_ids, labels} to the longest row; labels padded with -100.

    Forgetting protection: rows with a ``replay`` number n > 0 are replayed general prompts; the batch
    then carries a ``replay`` row mask and ``base_ids``/``base_logprobs``, the base model's distributions
    ``replay_targets[n - 1]`` at those rows' trained positions, in row order."""
    import torch

    from ownllm.data.render import IGNORE

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
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if "replay" in rows[0] and replay_targets is not None:
            batch["replay"] = torch.tensor([r["replay"] > 0 for r in rows])
            targets = [replay_targets[r["replay"] - 1] for r in rows if r["replay"] > 0]
            if targets:
                batch["base_ids"] = torch.cat([t[0] for t in targets])
                batch["base_logprobs"] = torch.cat([t[1] for t in targets])
        return batch

    return collate
