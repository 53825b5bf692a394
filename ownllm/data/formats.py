"""Readers for every common dataset file, and schema detection into one canonical form.

Readers yield ``Raw(source, line, value, error)`` one row at a time, so large files stream.
The canonical row is ``{"messages": [{"role", "content"}, ...]}`` or ``{"text": "..."}``.
"""
from __future__ import annotations

import codecs
import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ownllm.errors import DataError

SUPPORTED = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md")
FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt-completion", "text", "preference", "labels", "feedback")

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


# Lone surrogates: bytes that did not decode, kept by errors="surrogateescape" so that only the rows
# holding them are rejected (file:line) instead of the whole file failing or turning into mojibake.
_UNDECODED = re.compile("[\udc80-\udcff]")
_CHINESE = ("gb18030", "gbk", "gb2312", "cp936", "big5", "cp950", "big5hkscs")
_LEGACY_SUPERSETS = {"gbk": "gb18030", "gb2312": "gb18030", "cp936": "gb18030", "gb18030": "gb18030"}


def detect_encoding(path: str) -> str:
    """The file's text encoding, judged on the whole file, line by line.

    UTF-8 (``utf-8-sig``, BOM or not) unless the file has a UTF-16/32 BOM, or its non-ASCII lines are
    mostly not UTF-8: then the first encoding charset-normalizer proposes for those lines that
    decodes the *whole* file (GBK/GB2312 read as their superset GB18030). A UTF-8 file with a few bad
    bytes stays UTF-8; the rows holding them are rejected as ``bad_encoding``.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    utf8_lines, other = 0, []
    with open(path, "rb") as f:
        for line in f:
            if line.isascii():
                continue
            try:
                line.decode("utf-8")
                utf8_lines += 1
            except UnicodeDecodeError:
                other.append(line)
    if len(other) <= utf8_lines:
        return "utf-8-sig"
    from charset_normalizer import from_bytes

    matches = list(from_bytes(b"".join(other)[: 4 << 20]))
    # Our users' legacy files are mostly Chinese: on short samples charset-normalizer ranks Thai or
    # Korean first for GBK bytes, so a Chinese candidate almost as plausible as the best goes first.
    chinese = sorted((m for m in matches if m.encoding.lower() in _CHINESE), key=lambda m: m.chaos)
    if chinese and chinese[0].chaos <= matches[0].chaos + 0.1:
        matches.insert(0, chinese[0])
    for match in matches:
        enc = _LEGACY_SUPERSETS.get(match.encoding.lower(), match.encoding.lower())
        if _decodes(path, enc):
            return enc
    return "utf-8-sig"


def encoding_label(encoding: str) -> str:
    """An encoding as a person reads it: "utf-8-sig" -> "UTF-8"."""
    return encoding.replace("-sig", "").upper()


def _decodes(path: str, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                decoder.decode(block)
        decoder.decode(b"", final=True)
        return True
    except (UnicodeDecodeError, LookupError):
        return False


def read_text_file(path: str, what: str = "the file") -> str:
    """A small text file (a terms list, a prompt) in whatever encoding it has; a DataError naming the
    line when it does not decode."""
    encoding = detect_encoding(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{what} is not text in one encoding: byte 0x{data[e.start]:02X} is not valid "
                        f"{encoding_label(encoding)}", where=f"{path}:{line}",
                        hint="save it as UTF-8") from None


def undecoded(value, encoding: str) -> str | None:
    """Why a read value holds bytes that were not valid ``encoding`` (None when it has none)."""
    if isinstance(value, str):
        m = _UNDECODED.search(value)
        if m:
            return (f"byte 0x{ord(m.group(0)) - 0xDC00:02X} at character {m.start() + 1} is not valid "
                    f"{encoding_label(encoding)}")
    elif isinstance(value, (dict, list)):
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        return next((w for w in (undecoded(v, encoding) for v in items) if w), None)
    return None


def read_file(path: str, encoding: str | None = None, measure=None, text_limit: int = 2000) -> Iterator[Raw]:
    """Raw rows of one file. ``encoding``: from :func:`detect_encoding` when not given. For .txt/.md,
    ``measure(text)`` (default: characters) and ``text_limit`` size the chunks."""
    check_file(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        yield from _read_parquet(path)
        return
    encoding = encoding or detect_encoding(path)
    if ext in (".txt", ".md"):
        yield from _read_text(path, encoding, measure or len, text_limit)
        return
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv}[ext]
    for raw in reader(path, encoding):
        why = None if raw.error else undecoded(raw.value, encoding)
        if why:
            raw = Raw(raw.source, raw.line, _without_undecoded(raw.value), "bad_encoding", why)
        yield raw


def _without_undecoded(value):
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return _UNDECODED.sub("\ufffd", text)[:200]


def _open_text(path: str, encoding: str):
    return open(path, encoding=encoding, errors="surrogateescape", newline="")


def _read_jsonl(path: str, encoding: str) -> Iterator[Raw]:
    with _open_text(path, encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Raw(path, n, json.loads(line))
            except json.JSONDecodeError as e:
                if _UNDECODED.search(line):
                    yield Raw(path, n, _without_undecoded(line), "bad_encoding", undecoded(line, encoding))
                else:
                    yield Raw(path, n, line[:200], "bad_json", f"{e.msg} at column {e.colno}")


def _read_json(path: str, encoding: str) -> Iterator[Raw]:
    with _open_text(path, encoding) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if "\n" in text.strip() and _looks_like_jsonl(text):
            yield from _read_jsonl(path, encoding)  # a .json file that is really JSON Lines
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


def _read_csv(path: str, encoding: str) -> Iterator[Raw]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    # The csv module's default 131,072-character field limit made one long answer fatal for the whole
    # file; long fields are read and then rejected row by row as too_long, with their line.
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    try:
        with _open_text(path, encoding) as f:
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
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", where=f"{path}:{reader.line_num}") from None


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


# Sentence ends: Chinese/Japanese 。！？ (no space follows them), Latin .!?; followed by a space.
_SENTENCE = re.compile(r"(?<=[。！？；…])|(?<=[.!?;])(?=\s)")


def _read_text(path: str, encoding: str, measure, limit: int) -> Iterator[Raw]:
    """Plain text for continued pre-training: paragraphs packed into chunks of at most ``limit``
    (as ``measure`` counts); a longer paragraph is cut at sentence ends, a longer sentence at spaces
    or, in text without spaces, between characters."""
    chunk: list[str] = []
    size, start = 0, 1
    for line, para in _paragraphs(path, encoding):
        why = undecoded(para, encoding)
        if why:
            yield Raw(path, line, _without_undecoded(para), "bad_encoding", why)
            continue
        for piece, n in split_to_fit(para, measure, limit):
            if chunk and size + n > limit:
                yield Raw(path, start, {"text": "\n\n".join(chunk)})
                chunk, size = [], 0
            if not chunk:
                start = line
            chunk.append(piece.strip())
            size += n
    if chunk:
        yield Raw(path, start, {"text": "\n\n".join(chunk)})


def _paragraphs(path: str, encoding: str) -> Iterator[tuple[int, str]]:
    with _open_text(path, encoding) as f:
        para: list[str] = []
        first = 1
        for n, line in enumerate(f, 1):
            if line.strip():
                if not para:
                    first = n
                para.append(line)
            elif para:
                yield first, "".join(para).strip()
                para = []
        if para:
            yield first, "".join(para).strip()


def sentences(text: str) -> list[str]:
    """``text`` cut after each sentence end (。！？； and .!?; before a space); the pieces join back to it."""
    return [s for s in _SENTENCE.split(text) if s]


def split_to_fit(text: str, measure, limit: int) -> list[tuple[str, int]]:
    """``text`` as (piece, size) pairs that each measure at most ``limit``: sentences packed together,
    a sentence that is too long halved at a space (or between characters) until it fits. Each piece
    is measured once; sizes add up (cuts fall on spaces or sentence ends)."""
    # No token spans more than 16 characters, so a longer text is too long without tokenizing it.
    n = measure(text) if len(text) <= 16 * limit else None
    if n is not None and (n <= limit or len(text) == 1):
        return [(text, n)]
    parts = sentences(text)
    if len(parts) > 1:
        return _pack([p for s in parts for p in split_to_fit(s, measure, limit)], limit)
    mid = len(text) // 2
    cut = text.rfind(" ", 0, mid + 1)
    cut = cut if cut > 0 else mid
    return _pack(split_to_fit(text[:cut], measure, limit) + split_to_fit(text[cut:], measure, limit), limit)


def _pack(pieces: list[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for piece, n in pieces:
        if out and out[-1][1] + n <= limit:
            out[-1] = (out[-1][0] + piece, out[-1][1] + n)
        else:
            out.append((piece, n))
    return out


def read_objects(rows: Iterable[Any], source: str = "<memory>") -> Iterator[Raw]:
    """Rows already in memory: a list of dicts or a 🤗 Dataset."""
    for i, row in enumerate(rows, 1):
        yield Raw(source, i, row)
