"""Small shared helpers: atomic writes (temporary name, then rename) and JSON Lines."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager

from ownllm.errors import DiskFullError


def atomic_write(path: str, text: str) -> None:
    """Write text to ``path`` through a temporary file, so a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"the disk is full while writing {path}", hint="free some space and retry") from e
        raise


@contextmanager
def atomic_dir(path: str):
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed,
    so a crash or a full disk never leaves half a folder under the final name."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskFullError(f"the disk is full while writing {path}", hint="free some space and retry") from e
        raise


def write_jsonl(path: str, rows) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str, row: dict) -> None:
    """One row added to ``path`` and on the disk before this returns: whole, under an exclusive lock (threads
    and processes appending at once never interleave), after a newline when a crash cut the last line short
    (so that line, skipped by ``read_appended_jsonl``, never swallows this one)."""
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(fd)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"the disk is full while writing {path}", hint="free some space and retry") from e
        raise


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: one process appends at a time there (the servers run one process)
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def read_appended_jsonl(path: str) -> tuple[list[dict], int]:
    """The rows of a file written by ``append_jsonl``, and how many lines could not be read (cut short by a
    crash, or edited by hand into something that is not a JSON object)."""
    rows, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            rows.append(row) if isinstance(row, dict) else None
            bad += not isinstance(row, dict)
    return rows, bad


def read_jsonl(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def is_cjk(text: str) -> bool:
    """True when ``text`` has a Chinese, Japanese or Korean character."""
    return bool(CJK.search(text or ""))
