"""Whatever the user passed as data → prepared rows in the run directory → tokenized datasets."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ownllm.errors import DataError


@dataclass
class TrainData:
    train: list
    val: list
    test: list
    report: dict


def _is_dataset_dict(obj) -> bool:
    return hasattr(obj, "keys") and hasattr(obj, "column_names") and isinstance(getattr(obj, "column_names"), dict)


def resolve_data(train, eval_data, cfg, run_dir: str) -> TrainData:
    """Accepts a path (file, folder or prepared run dir), PreparedData, a 🤗 Dataset/DatasetDict or a list."""
    from ownllm.data.prepare import PreparedData, load_prepared, prepare_dataset

    common = dict(model=cfg.model, system=cfg.system, template=cfg.template, max_seq_len=cfg.max_seq_len,
                  seed=cfg.seed)
    if isinstance(train, (str, os.PathLike)) and os.path.exists(os.path.join(train, "data", "train.jsonl")):
        p = load_prepared(os.fspath(train))
    elif isinstance(train, PreparedData):
        p = train
    elif _is_dataset_dict(train):
        split = {k: list(train[k]) for k in train.keys()}
        eval_rows = split.get("validation") or split.get("val") or (list(eval_data) if eval_data is not None else None)
        p = _prepare_rows(split.get("train") or [], eval_rows, split.get("test"), cfg, run_dir, common)
    elif isinstance(train, (str, os.PathLike)):
        split = cfg.split if eval_data is None else "1,0,0"
        p = prepare_dataset([os.fspath(train)], out=run_dir, split=split,
                            val=eval_data if isinstance(eval_data, str) else None, **common)
    else:
        rows = list(train)
        eval_rows = list(eval_data) if eval_data is not None else None
        p = _prepare_rows(rows, eval_rows, None, cfg, run_dir, common)
    if not p.train:
        raise DataError("there are no training rows")
    return TrainData(p.train, p.val, p.test, p.report)


def _prepare_rows(train_rows, eval_rows, test_rows, cfg, run_dir, common):
    """In-memory rows: checked and cleaned like files. Without validation rows, 10% are held out
    so that early stopping has a validation loss to watch."""
    from ownllm.data.prepare import prepare_dataset

    if not train_rows:
        raise DataError("the training dataset is empty")
    if eval_rows:
        p = prepare_dataset(train_rows, split="1,0,0", **common)
        p.val = prepare_dataset(eval_rows, split="1,0,0", dedup="exact", **{**common}).train
    else:
        p = prepare_dataset(train_rows, split="0.9,0.1,0", **common)
    if test_rows:
        p.test = prepare_dataset(test_rows, split="1,0,0", dedup="exact", **common).train
    from ownllm.data.report import write_outputs

    p.report["splits"] = {"train": len(p.train), "val": len(p.val), "test": len(p.test)}
    write_outputs(p, run_dir)
    return p


def tokenize(rows: list, tokenizer, cfg):
    """Rows → a 🤗 Dataset of input_ids/labels; rows left with no trained token are dropped."""
    from datasets import Dataset

    from ownllm.data.render import chat_template_for, render_row

    template = chat_template_for(tokenizer, cfg.template)
    ids, labels, dropped = [], [], 0
    for row in rows:
        r = render_row(row, tokenizer, template=template, max_seq_len=cfg.max_seq_len,
                       train_on_prompt=cfg.train_on_prompt)
        if r.trained_tokens == 0:
            dropped += 1
            continue
        ids.append(r.input_ids)
        labels.append(r.labels)
    return Dataset.from_dict({"input_ids": ids, "labels": labels}), dropped
