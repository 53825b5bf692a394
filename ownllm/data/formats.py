"""Readers for every common dataset file, and schema detection into one canonical form.

Readers yield ``Raw(source, line, value, error)`` one row at a time, so large files stream.
The canonical row is ``{"messages": [{"role", "content"}, ...]}`` or ``{"text": "..."}``.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ownllm.errors import DataError

SUPPORTED = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md")
FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt-completion", "text")

# (prompt column, response column) spellings, in order of preference.
PAIR_SPELLINGS = [
    ("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("query", "response"),
    ("instruction", "output"), ("input", "output"), ("question", "response"), ("user", "assistant"),
    ("问题", "答案"), ("问", "答"), ("提问", "回答"), ("问题", "回答"), ("指令", "输出"),
]
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "chatgpt": "assistant", "system": "system",
                  "tool": "tool", "function": "tool", "observation": "tool"}
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Raw:
    source: str
    line: int
    value: Any = None
    error: str | None = None      # reason code when the row could not even be read
    detail: str = ""


# -- files ----------------------------------------------------------------------------------
def list_files(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """Expand folders; return (files to read, files skipped because of their type)."""
    files, skipped = [], []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(names):
                    full = os.path.join(root, n)
                    (files if n.lower().endswith(SUPPORTED) else skipped).append(full)
            if not files:
                raise DataError(f"no dataset files in folder {path}",
                                hint=f"supported: {', '.join(SUPPORTED)}")
        elif not os.path.exists(path):
            raise DataError(f"file not found: {path}", hint="check the path (and the current folder)")
        elif not path.lower().endswith(SUPPORTED):
            raise DataError(f"unsupported file type: {path}", hint=f"supported: {', '.join(SUPPORTED)}")
        else:
            files.append(path)
    return files, skipped


def check_file(path: str) -> None:
    """Reject empty and binary files with a clear message before parsing them."""
    if os.path.getsize(path) == 0:
        raise DataError("the file is empty (0 bytes)", where=path)
    if path.lower().endswith(".parquet"):
        return
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError("this looks like a binary file, not text", where=path,
                        hint="export the data as .jsonl, .json, .csv, .tsv, .parquet or .txt")


def detect_encoding(path: str) -> str:
    """utf-8-sig for UTF-8 (with or without BOM), else what charset-normalizer finds (GB18030 for GBK)."""
    with open(path, "rb") as f:
        sample = f.read(1 << 20)
    try:
        sample.decode("utf-8")
        return "utf-8-sig"
    except UnicodeDecodeError as e:
        if e.start > len(sample) - 4:  # a multi-byte character cut by the sample's end
            return "utf-8-sig"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    enc = (best.encoding if best else "gb18030").lower()
    # GBK/GB2312 are subsets of GB18030; reading with the superset never loses a character.
    return "gb18030" if enc in ("gbk", "gb2312", "gb18030", "cp936") else enc


def read_file(path: str) -> Iterator[Raw]:
    check_file(path)
    ext = os.path.splitext(path)[1].lower()
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv,
              ".parquet": _read_parquet, ".txt": _read_text, ".md": _read_text}[ext]
    yield from reader(path)


def _open_text(path: str):
    return open(path, encoding=detect_encoding(path), errors="strict", newline="")


def _read_jsonl(path: str) -> Iterator[Raw]:
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Raw(path, n, json.loads(line))
            except json.JSONDecodeError as e:
                yield Raw(path, n, line[:200], "bad_json", f"{e.msg} at column {e.colno}")


def _read_json(path: str) -> Iterator[Raw]:
    with _open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if "\n" in text.strip() and _looks_like_jsonl(text):
            yield from _read_jsonl(path)  # a .json file that is really JSON Lines
            return
        raise DataError(f"not valid JSON: {e.msg}", where=f"{path}:{e.lineno}:{e.colno}",
                        hint="fix the JSON, or save one object per line as .jsonl") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("the JSON object does not hold exactly one list of rows",
                            where=path, hint="use a JSON array of objects, or {\"data\": [...]}")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError("JSON must be an array of objects", where=path)
    for i, row in enumerate(data, 1):
        yield Raw(path, i, row)


def _looks_like_jsonl(text: str) -> bool:
    first = text.strip().splitlines()[0]
    try:
        json.loads(first)
        return True
    except json.JSONDecodeError:
        return False


def _read_csv(path: str) -> Iterator[Raw]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if not reader.fieldnames:
                raise DataError("the CSV has no header row", where=path)
            row_start = 2
            for row in reader:
                if None in row:
                    yield Raw(path, row_start, dict(row), "wrong_type", "more cells than header columns")
                else:
                    yield Raw(path, row_start, {k.strip(): v for k, v in row.items()})
                row_start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise DataError(f"cannot decode the file's text ({e.encoding})", where=path,
                        hint="save it as UTF-8 (Excel: 'CSV UTF-8')") from None
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", where=path) from None


def _read_parquet(path: str) -> Iterator[Raw]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"not a readable Parquet file: {e}", where=path) from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield Raw(path, n, row)


def _read_text(path: str, max_chars: int = 2000) -> Iterator[Raw]:
    """Plain text for continued pre-training: paragraphs packed into chunks of ~max_chars."""
    with _open_text(path) as f:
        chunk, start, line_no, para_start = [], 1, 0, 1
        para: list[str] = []

        def flush_para():
            nonlocal chunk
            if para:
                chunk.append("".join(para).strip())
                para.clear()

        for line_no, line in enumerate(f, 1):
            if line.strip():
                if not para:
                    para_start = line_no
                para.append(line)
                continue
            flush_para()
            if sum(len(c) for c in chunk) >= max_chars:
                yield Raw(path, start, {"text": "\n\n".join(chunk)})
                chunk, start = [], line_no + 1
        flush_para()
        if chunk:
            yield Raw(path, start if start <= para_start else para_start, {"text": "\n\n".join(chunk)})


def read_objects(rows: Iterable[Any], source: str = "<memory>") -> Iterator[Raw]:
    """Rows already in memory: a list of dicts or a 🤗 Dataset."""
    for i, row in enumerate(rows, 1):
        yield Raw(source, i, row)
