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

from ownllm.data import formats, preference, schema as schemas
from ownllm.data.clean import NORMALIZATIONS, clean_row
from ownllm.data.dedup import Deduplicator, distinct_parts, excerpt, find_leaks
from ownllm.data.split import parse_split, split_rows
from ownllm.data.validate import check_row
from ownllm.config import setting
from ownllm.errors import ConfigError, DataError

SAMPLE_FOR_DETECTION = 50


@dataclass
class PrepareConfig:
    """The prepare stage's settings: ``ownllm data prepare``'s flags, the studio's data step, config.yaml's
    ``prepare:`` section."""
    format: str = setting("auto", "auto | messages | sharegpt | alpaca | prompt-completion | text | preference "
                                  "(prompt, chosen, rejected) | labels (prompt, completion, good/bad label) | feedback "
                                  "(RUN/feedback.jsonl)")
    columns: str | dict | None = setting(None, "column mapping, e.g. prompt=问题,response=答案")
    split: str | tuple = setting("0.8,0.1,0.1", "train,val,test fractions (default 0.8,0.1,0.1)")
    seed: int = setting(42, "shuffle seed (default 42)")
    strict: bool = setting(False, "fail on the first bad row")
    max_rejected: float = setting(0.1, "fail if more than this share of rows is bad")
    max_seq_len: int = setting(1024, "token limit used for the truncation count")
    system: str | None = setting(None, "system prompt added to every conversation")
    pii: str = setting("keep", "mask e-mails, phones, ID and card numbers", choices=("mask", "keep"))
    dedup: str = setting("near", "duplicate removal on the user and assistant turns (never the system prompt); near "
                                 "(default) also removes rows that differ only slightly, never ones whose numbers or "
                                 "names differ; exact removes identical rows only", choices=("exact", "near", "off"))
    normalize: str = setting("nfc", "Unicode normalisation: nfc (default, changes no meaning) or nfkc (full-width "
                                    "letters and digits to ASCII, but also m² to m2 and ① to 1)",
                             choices=("nfc", "nfkc"))
    strip_html: bool = setting(False, "remove HTML tags and decode entities (off by default: it deletes literal tags "
                                      "in text about HTML)")
    model: str | None = setting(None, "model whose tokenizer and chat template are used (default smollm2-135m)")
    template: str | None = setting(None, "chat template: the model's own, or chatml, llama3, qwen, deepseek, alpaca")

    def validate(self) -> None:
        problems = []
        if self.format not in formats.FORMATS:
            problems.append(f"--format must be one of {', '.join(formats.FORMATS)} (got {self.format})")
        if self.pii not in ("mask", "keep"):
            problems.append(f"--pii must be mask or keep (got {self.pii})")
        if self.normalize not in NORMALIZATIONS:
            problems.append(f"--normalize must be one of {', '.join(NORMALIZATIONS)} (got {self.normalize})")
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


@dataclass
class _Source:
    name: str
    raws: Iterator
    encoding: str | None = None


def _sources(inputs, cfg: PrepareConfig, out: str | None = None) -> tuple[list[_Source], list[str], list[str]]:
    """Each file (or the in-memory rows) as its own source of raw rows; plus the files skipped.

    Files under ``out/data`` (this run's own output, when ``--out`` is the input folder) are skipped.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if hasattr(inputs, "column_names") or (isinstance(inputs, list) and (not inputs or not isinstance(
            inputs[0], (str, os.PathLike)))):
        return [_Source("<memory>", formats.read_objects(inputs))], [], []
    files, skipped = formats.list_files(inputs)
    if out:
        from ownllm.rundir import RunDir

        own = os.path.realpath(RunDir(out).data_dir) + os.sep
        skipped += [f for f in files if os.path.realpath(f).startswith(own)]
        files = [f for f in files if not os.path.realpath(f).startswith(own)]
        if not files:
            raise DataError("the only dataset files found are this run's own output", where=own,
                            hint="give the files to prepare, not the run directory")
    for f in files:
        formats.check_file(f)  # fail on an empty or binary file before reading any other
    measure = limit = None
    if any(f.lower().endswith((".txt", ".md")) for f in files):
        from ownllm.data.report import shared_tokenizer

        tokenizer = shared_tokenizer(cfg.model)
        measure = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        limit = cfg.max_seq_len - 1  # room for the end-of-text token
    sources = []
    for f in files:
        enc = None if f.lower().endswith(".parquet") else formats.detect_encoding(f)
        sources.append(_Source(f, formats.read_file(f, enc, measure, limit or 2000), enc))
    return sources, files, skipped


def _excerpt(value, limit: int = 2000):
    """A rejected row as stored in rejected.jsonl: whole when short, else its first ``limit`` characters."""
    if not isinstance(value, (dict, list, str)):
        value = repr(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return value if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters in all)"


class _Rejects:
    def __init__(self, strict: bool):
        self.strict, self.rows = strict, []

    def add(self, source: str, line: int, value, reason: str, detail: str, **extra) -> None:
        if self.strict:
            raise DataError(f"{reason}: {detail}", where=f"{source}:{line}",
                            hint="fix the row, or drop --strict to skip bad rows and list them in rejected.jsonl")
        self.rows.append({"source": source, "line": line, "reason": reason, "detail": detail,
                          "row": _excerpt(value), **extra})


@dataclass
class _Converted:
    rows: list
    schemas: dict            # source -> Schema (None when no row of it could be read)
    stats: Counter
    encodings: dict          # source -> encoding, for text files


def _detect(source: _Source, cfg: PrepareConfig) -> tuple[schemas.Schema | None, list]:
    """The schema of one source, from its first rows that parse (however many broken rows come first)."""
    head, samples = [], []
    for raw in source.raws:
        head.append(raw)
        if raw.error is None and isinstance(raw.value, dict):
            samples.append(raw.value)
            if len(samples) >= SAMPLE_FOR_DETECTION:
                break
    if not samples and head and all(r.error for r in head):
        return None, head  # nothing parsed: every row is rejected with its own reason
    try:
        return preference.detect_format(samples, cfg.format, cfg.columns), head
    except DataError as e:
        if not e.where and source.name != "<memory>":
            e.where = source.name  # OwnLLMError's message reads it
        raise


def convert_rows(sources: list[_Source], cfg: PrepareConfig, rejects: _Rejects,
                 dedup: Deduplicator | None = None) -> _Converted:
    """Per source: detect its schema, then convert, clean, validate and deduplicate, streaming.
    ``stats["total"]`` counts rows read."""
    dedup = dedup or Deduplicator(cfg.dedup)
    max_chars = cfg.max_seq_len * 16  # generous: only rows that could never fit are dropped here
    out = _Converted([], {}, Counter(), {s.name: s.encoding for s in sources if s.encoding})
    seen_at: Counter = Counter()  # rows per file:line (a long text paragraph becomes several chunks)
    for source in sources:
        schema, head = _detect(source, cfg)
        out.schemas[source.name] = schema
        for raw in itertools.chain(head, source.raws):
            out.stats["total"] += 1
            if raw.error:
                rejects.add(raw.source, raw.line, raw.value, raw.error, raw.detail)
                continue
            changed: set = set()
            try:
                row = preference.canonical(raw.value, schema, cfg.system)
                row, masked = clean_row(row, cfg.pii, cfg.normalize, cfg.strip_html, changed)
                row.update(_provenance(raw.value))
                out.stats["pii_masked"] += masked
                check_row(row, max_chars)
            except schemas.RowError as e:
                rejects.add(raw.source, raw.line, raw.value, e.reason, e.detail)
                continue
            out.stats.update(f"changed_{c}" for c in changed)
            key = f"{raw.source}:{raw.line}"
            seen_at[key] += 1
            key += f" (part {seen_at[key]})" if seen_at[key] > 1 else ""
            dup, first = dedup.check(row, key)
            if dup:
                out.stats[dup] += 1
                rejects.add(raw.source, raw.line, raw.value, dup, f"same as {first}", same_as=first,
                            removed_row=excerpt(distinct_parts(row)), kept_row=dedup.excerpt_of(first))
                continue
            out.rows.append(row)
    return out


def _provenance(value: dict) -> dict:
    """What a row keeps beside its turns: where it came from (``source``), the fact it phrases
    (``fact``: the split holds facts out, not rows), which model wrote the answer judged (``model``, in
    feedback) and a split it is pinned to."""
    kept = {k: value[k] for k in ("source", "fact", "model") if isinstance(value.get(k), str) and value[k]}
    pin = value.get("split")
    pin = "val" if pin == "validation" else pin
    if isinstance(pin, str) and pin in ("train", "val", "test"):
        kept["split"] = pin
    return kept


def prepare_dataset(inputs, out: str | None = None, *, val=None, test=None, **options) -> PreparedData:
    """Prepare a dataset. ``inputs``: paths, a folder, a 🤗 Dataset or a list of dicts.

    ``val``/``test``: the person's own validation/test rows (a path, or rows in memory), used instead
    of a split and checked for leakage against the training rows. Options are the fields of
    :class:`PrepareConfig`. With ``out`` (a run directory), writes ``out/data/{train,val,test}.jsonl``,
    ``rejected.jsonl``, ``report.md``, ``report.json``.
    """
    cfg = PrepareConfig(**options)
    cfg.validate()
    sources, files, skipped = _sources(inputs, cfg, out)
    rejects = _Rejects(cfg.strict)
    pool = convert_rows(sources, cfg, rejects)
    total = pool.stats["total"]
    if not total:
        raise DataError("no rows were found in the input", where=", ".join(map(str, files)) or None)
    _check_rejected_share(total, pool.stats, cfg, rejects)
    given = {name: _given_split(rows, cfg, rejects, out) for name, rows in (("val", val), ("test", test))
             if rows is not None}
    train, v, t = split_rows(pool.rows, cfg.split, cfg.seed, need_val="val" not in given,
                             need_test="test" not in given)
    v = given["val"].rows if "val" in given else v
    t = given["test"].rows if "test" in given else t
    # Near-duplicate removal over the whole pool already keeps split rows apart; rows from the
    # person's own val/test (or a pool not near-deduplicated) are checked here.
    leaks = find_leaks(train, v + t) if given or cfg.dedup != "near" else []
    held = [("val", n, r) for n, r in enumerate(v, 1)] + [("test", n, r) for n, r in enumerate(t, 1)]
    for i, j in leaks:
        split, n, row = held[j]
        rejects.rows.append({"source": "train split", "line": i + 1, "reason": "leakage",
                             "detail": f"near-duplicate of {split} row {n}", "row": _excerpt(train[i]),
                             "removed_row": excerpt(distinct_parts(train[i])), "kept_row": excerpt(distinct_parts(row))})
    leak_set = {i for i, _ in leaks}
    train = [r for i, r in enumerate(train) if i not in leak_set]
    if not train:
        raise DataError("no training rows are left after checks", hint="see rejected.jsonl for the reasons")
    for g in given.values():
        total += g.stats["total"]
        pool.stats.update({k: v for k, v in g.stats.items() if k != "total"})
        pool.encodings.update(g.encodings)
    from ownllm.data.report import build_report

    schemas_by_source = {**pool.schemas, **{k: s for g in given.values() for k, s in g.schemas.items()}}
    report = build_report(cfg, schemas_by_source, files, skipped, total, rejects.rows, pool.stats,
                          train, v, t, len(leaks), pool.encodings)
    result = PreparedData(train, v, t, report, rejects.rows, out)
    if out:
        from ownllm.data.report import write_outputs

        write_outputs(result, out)
    return result


def _check_rejected_share(total: int, stats: Counter, cfg: PrepareConfig, rejects: _Rejects) -> None:
    dups = stats["duplicate"] + stats["near_duplicate"]
    bad = len(rejects.rows) - dups
    if total and bad / total > cfg.max_rejected:
        reasons = Counter(r["reason"] for r in rejects.rows if r["reason"] not in ("duplicate", "near_duplicate"))
        first = next((r for r in rejects.rows if r["reason"] not in ("duplicate", "near_duplicate")), None)
        hint = "fix the data (or the --format/--columns choice), or raise --max-rejected"
        if reasons.get("bad_encoding", 0) * 2 > bad:
            hint = "save the file as UTF-8 (Excel: 'CSV UTF-8'), or raise --max-rejected"
        raise DataError(
            f"{bad} of {total} rows ({bad / total:.0%}) are invalid, more than --max-rejected {cfg.max_rejected:.0%}: "
            + ", ".join(f"{k} {v}" for k, v in reasons.most_common())
            + (f"; first at {first['source']}:{first['line']} ({first['detail']})" if first else ""), hint=hint)
    if total and dups / total > cfg.max_rejected:
        first = next(r for r in rejects.rows if r["reason"] in ("duplicate", "near_duplicate"))
        raise DataError(
            f"deduplication would remove {dups} of {total} rows ({dups / total:.0%}), more than --max-rejected "
            f"{cfg.max_rejected:.0%}: {stats['duplicate']} exact, {stats['near_duplicate']} near duplicates; "
            f"first at {first['source']}:{first['line']} ({first['detail']})",
            hint="if these rows are distinct, use --dedup exact (only identical rows) or --dedup off; "
                 "or raise --max-rejected")


def _given_split(rows, cfg: PrepareConfig, rejects: _Rejects, out: str | None) -> _Converted:
    sources, _, _ = _sources(rows, cfg, out)
    # Its own deduplicator: a validation row is compared with the training rows by the leakage check.
    return convert_rows(sources, cfg, rejects, Deduplicator("exact" if cfg.dedup != "off" else "off"))


def load_prepared(run_dir: str) -> PreparedData:
    """Read a prepared run directory back (what the prepare stage wrote there)."""
    from ownllm.rundir import RunDir
    from ownllm.utils import read_jsonl

    run = RunDir(run_dir)
    if not run.is_prepared():
        raise DataError(f"{run.path} has no prepared data (data/train.jsonl)",
                        hint=f"run: ownllm data prepare YOUR_FILE --out {run.path}")

    def read(name):
        return read_jsonl(run.split(name)) if os.path.exists(run.split(name)) else []

    return PreparedData(read("train"), read("val"), read("test"), run.data_report() or {}, read("rejected"), run.path)
