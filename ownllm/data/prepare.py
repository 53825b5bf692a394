"""`ownllm data prepare`: read → convert → clean → validate → deduplicate → split → leakage → report.

Input files are only read. Rejected rows go to ``data/rejected.jsonl`` with file, line and reason.
"""
from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from ownllm.data import formats, schema as schemas
from ownllm.data.clean import clean_row
from ownllm.data.dedup import Deduplicator, find_leaks
from ownllm.data.split import parse_split, split_rows
from ownllm.data.validate import check_row, row_text
from ownllm.errors import ConfigError, DataError

SAMPLE_FOR_DETECTION = 50


@dataclass
class PrepareConfig:
    format: str = "auto"
    columns: dict | None = None
    split: tuple = (0.8, 0.1, 0.1)
    seed: int = 42
    strict: bool = False
    max_rejected: float = 0.1
    max_seq_len: int = 1024
    system: str | None = None
    pii: str = "keep"
    dedup: str = "near"
    model: str | None = None
    template: str | None = None

    def validate(self) -> None:
        problems = []
        if self.format not in formats.FORMATS:
            problems.append(f"--format must be one of {', '.join(formats.FORMATS)} (got {self.format})")
        if self.pii not in ("mask", "keep"):
            problems.append(f"--pii must be mask or keep (got {self.pii})")
        if self.dedup not in ("exact", "near", "off"):
            problems.append(f"--dedup must be exact, near or off (got {self.dedup})")
        if not 0 <= self.max_rejected <= 1:
            problems.append(f"--max-rejected must be between 0 and 1 (got {self.max_rejected})")
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < 16:
            problems.append(f"--max-seq-len must be an integer >= 16 (got {self.max_seq_len})")
        try:
            self.split = parse_split(self.split)
        except ConfigError as e:
            problems += e.problems
        try:
            self.columns = schemas.parse_columns(self.columns)
        except ConfigError as e:
            problems += e.problems
        if problems:
            raise ConfigError(problems)


@dataclass
class PreparedData:
    """What ``prepare_dataset`` returns; ``ownllm.Trainer`` accepts it as ``train_dataset``."""
    train: list
    val: list
    test: list
    report: dict
    rejected: list = field(default_factory=list)
    out_dir: str | None = None

    def __getitem__(self, split: str) -> list:
        return {"train": self.train, "validation": self.val, "val": self.val, "test": self.test}[split]

    def to_datasets(self):
        """A 🤗 DatasetDict with train/validation/test."""
        from datasets import Dataset, DatasetDict

        return DatasetDict({k: Dataset.from_list(v) for k, v in
                            (("train", self.train), ("validation", self.val), ("test", self.test)) if v})


def _raw_rows(inputs) -> tuple[Iterator, list[str], list[str]]:
    """Raw rows, streamed, from paths, a 🤗 Dataset or a list of dicts; plus files read and skipped."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if hasattr(inputs, "column_names") or (isinstance(inputs, list) and inputs and isinstance(inputs[0], dict)):
        return formats.read_objects(inputs), [], []
    files, skipped = formats.list_files(inputs)
    for f in files:
        formats.check_file(f)  # fail on an empty or binary file before reading any other
    return itertools.chain.from_iterable(formats.read_file(f) for f in files), files, skipped


class _Rejects:
    def __init__(self, strict: bool):
        self.strict, self.rows = strict, []

    def add(self, raw, reason: str, detail: str) -> None:
        if self.strict:
            raise DataError(f"{reason}: {detail}", where=f"{raw.source}:{raw.line}",
                            hint="fix the row, or drop --strict to skip bad rows and list them in rejected.jsonl")
        value = raw.value if isinstance(raw.value, (dict, list, str)) else repr(raw.value)
        if isinstance(value, str) and len(value) > 2000:
            value = value[:2000] + "…"
        self.rows.append({"source": raw.source, "line": raw.line, "reason": reason, "detail": detail, "row": value})


def convert_rows(raws: Iterator, cfg: PrepareConfig, rejects: _Rejects) -> tuple[list, schemas.Schema, Counter]:
    """Detect the schema, convert, clean, validate and deduplicate, streaming. Returns kept rows and
    counts (``stats["total"]`` rows read)."""
    raws = iter(raws)
    head = list(itertools.islice(raws, SAMPLE_FOR_DETECTION * 4))
    samples = [r.value for r in head if r.error is None and isinstance(r.value, dict)][:SAMPLE_FOR_DETECTION]
    schema = schemas.detect_format(samples, cfg.format, cfg.columns)
    dedup = Deduplicator(cfg.dedup)
    max_chars = cfg.max_seq_len * 16  # generous: only rows that could never fit are dropped here
    kept, stats = [], Counter()
    for raw in itertools.chain(head, raws):
        stats["total"] += 1
        if raw.error:
            rejects.add(raw, raw.error, raw.detail)
            continue
        try:
            row = schemas.to_canonical(raw.value, schema, cfg.system)
            row, masked = clean_row(row, cfg.pii)
            stats["pii_masked"] += masked
            check_row(row, max_chars)
        except schemas.RowError as e:
            rejects.add(raw, e.reason, e.detail)
            continue
        dup, first = dedup.check(row_text(row), f"{raw.source}:{raw.line}")
        if dup:
            stats[dup] += 1
            rejects.add(raw, dup, f"same as {first}")
            continue
        kept.append(row)
    return kept, schema, stats


def prepare_dataset(inputs, out: str | None = None, *, val=None, test=None, **options) -> PreparedData:
    """Prepare a dataset. ``inputs``: paths, a folder, a 🤗 Dataset or a list of dicts.

    Options are the fields of :class:`PrepareConfig`. With ``out`` (a run directory), writes
    ``out/data/{train,val,test}.jsonl``, ``rejected.jsonl``, ``report.md``, ``report.json``.
    """
    cfg = PrepareConfig(**options)
    cfg.validate()
    raws, files, skipped = _raw_rows(inputs)
    rejects = _Rejects(cfg.strict)
    rows, schema, stats = convert_rows(raws, cfg, rejects)
    total = stats["total"]
    if not total:
        raise DataError("no rows were found in the input", where=", ".join(map(str, files)) or None)
    _check_rejected_share(total, len(rejects.rows) - stats["duplicate"] - stats["near_duplicate"], cfg, rejects)
    given = {name: _given_split(path, cfg, rejects) for name, path in (("val", val), ("test", test)) if path}
    train, v, t = split_rows(rows, cfg.split, cfg.seed, need_val="val" not in given, need_test="test" not in given)
    v, t = given.get("val", v), given.get("test", t)
    # Near-duplicate removal over the whole pool already keeps split rows apart; rows from the
    # user's own val/test files (or a pool not near-deduplicated) are checked here.
    check_leaks = bool(given) or cfg.dedup != "near"
    leaks = find_leaks([row_text(r) for r in train], [row_text(r) for r in v + t]) if check_leaks else []
    for i in leaks:
        rejects.rows.append({"source": "train split", "line": i, "reason": "leakage",
                             "detail": "near-duplicate of a validation/test row", "row": train[i]})
    leak_set = set(leaks)
    train = [r for i, r in enumerate(train) if i not in leak_set]
    if not train:
        raise DataError("no training rows are left after checks", hint="see rejected.jsonl for the reasons")
    from ownllm.data.report import build_report

    report = build_report(cfg, schema, files, skipped, total, len(rows), rejects.rows, stats,
                          train, v, t, len(leaks))
    result = PreparedData(train, v, t, report, rejects.rows, out)
    if out:
        from ownllm.data.report import write_outputs

        write_outputs(result, out)
    return result


def _check_rejected_share(total: int, bad: int, cfg: PrepareConfig, rejects: _Rejects) -> None:
    if total and bad / total > cfg.max_rejected:
        reasons = Counter(r["reason"] for r in rejects.rows)
        first = next((r for r in rejects.rows if r["reason"] not in ("duplicate", "near_duplicate")), None)
        raise DataError(
            f"{bad} of {total} rows ({bad / total:.0%}) are invalid, more than --max-rejected {cfg.max_rejected:.0%}: "
            + ", ".join(f"{k} {v}" for k, v in reasons.most_common())
            + (f"; first at {first['source']}:{first['line']} ({first['detail']})" if first else ""),
            hint="fix the data (or the --format/--columns choice), or raise --max-rejected")


def _given_split(path: str, cfg: PrepareConfig, parent_rejects: _Rejects) -> list:
    raws, _, _ = _raw_rows(path)
    rejects = _Rejects(cfg.strict)
    kept, _, _ = convert_rows(raws, cfg, rejects)
    parent_rejects.rows.extend(rejects.rows)
    return kept


def load_prepared(run_dir: str) -> PreparedData:
    """Read a prepared run directory back."""
    data = os.path.join(run_dir, "data")
    if not os.path.exists(os.path.join(data, "train.jsonl")):
        raise DataError(f"{run_dir} has no prepared data (data/train.jsonl)",
                        hint=f"run: ownllm data prepare YOUR_FILE --out {run_dir}")

    def read(name):
        p = os.path.join(data, f"{name}.jsonl")
        if not os.path.exists(p):
            return []
        with open(p, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    report = {}
    if os.path.exists(os.path.join(data, "report.json")):
        with open(os.path.join(data, "report.json"), encoding="utf-8") as f:
            report = json.load(f)
    return PreparedData(read("train"), read("val"), read("test"), report, read("rejected"), run_dir)
