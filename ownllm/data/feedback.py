"""What a person says about a model's answers — good, bad, or a better answer they wrote — kept one row
each in ``RUN/feedback.jsonl``; `ownllm chat`, serve's ``/v1/feedback`` and the studio's chat step all
write here, through ``record``.

A row: ``messages`` (the conversation up to and including the question, a system prompt first when there
was one), ``answer`` (the model's), ``label`` ("good", "bad", or none when only a better answer was
given), ``better`` (the person's answer, or none), ``model`` (which weights answered: rows about another
model's answers can be told apart), ``source`` (chat, serve, studio) and ``time`` (UTC, ISO 8601).
Rows are appended whole under a lock and on the disk before ``record`` returns; nothing is rewritten.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field

from ownllm.errors import DataError
from ownllm.rundir import run_dir_of
from ownllm.utils import append_jsonl

LABELS = ("good", "bad")
ROLES = ("system", "user", "assistant")
MAX_CHARS = 100_000  # one conversation's text: far past any model's context, short of a file pasted by mistake


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Feedback:
    """One judgement of one answer (see the module docstring for the fields)."""
    messages: list
    answer: str
    label: str | None = None
    better: str | None = None
    model: str | None = None
    source: str = "api"
    time: str = field(default_factory=_now)

    def checked(self) -> "Feedback":
        """This row, or a DataError naming what is wrong with it (the person's or the app's mistake)."""
        if not isinstance(self.messages, list) or not self.messages:
            raise DataError("feedback needs 'messages': the conversation up to the question, as a list")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"feedback message {i} is not {{'role': system|user|assistant, 'content': text}}")
        if self.messages[-1]["role"] != "user" or not self.messages[-1]["content"].strip():
            raise DataError("feedback 'messages' must end with the question the answer was for (a user message)")
        if not isinstance(self.answer, str):
            raise DataError("feedback needs 'answer': the model's answer, as text")
        if self.label is not None and self.label not in LABELS:
            raise DataError(f"feedback 'label' must be one of {', '.join(LABELS)} (or left out), not {self.label!r}")
        if self.better is not None and (not isinstance(self.better, str) or not self.better.strip()):
            raise DataError("feedback 'better' must be the better answer's text (or left out)")
        if self.label is None and self.better is None:
            raise DataError("feedback needs a 'label' (good or bad), a 'better' answer, or both")
        if self.better is not None and self.better.strip() == self.answer.strip():
            raise DataError("the 'better' answer is the model's answer itself: say 'good' instead")
        size = sum(len(m["content"]) for m in self.messages) + len(self.answer) + len(self.better or "")
        if size > MAX_CHARS:
            raise DataError(f"feedback of {size:,} characters is past the {MAX_CHARS:,} one row may hold")
        return self

    def row(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def record(path: str, feedback: Feedback) -> dict:
    """Check ``feedback`` and append it to ``path`` (a feedback.jsonl); return the row as written."""
    row = feedback.checked().row()
    append_jsonl(path, row)
    return row


def feedback_path(model, given: str | None = None) -> str | None:
    """Where feedback about ``model``'s answers goes: ``given`` (a file the person named), else the
    run directory's feedback.jsonl when ``model`` is a run, else nowhere (None)."""
    if given:
        return os.path.abspath(given)
    run = run_dir_of(model)
    return run.feedback_jsonl if run else None


_hashes: dict[tuple, str] = {}


def model_id(model) -> str:
    """Which weights answer for ``model``: for a run, ``sha256:`` and the first 16 hex digits of its trained
    weights' hash (a retrained run gets a new one; computed once per file state); for anything else, the
    name as given (an alias, a folder, a file)."""
    run = run_dir_of(model)
    folder = run.trained_output() if run else None
    if folder is None:
        return str(model)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.endswith((".safetensors", ".bin", ".pt")))
    key = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    if key not in _hashes:
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.basename(f).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _hashes[key] = "sha256:" + h.hexdigest()[:16]
    return _hashes[key]


def judged_rows(path: str) -> list[dict]:
    """The canonical judged rows (``data.preference``) of a feedback file as it stands: a better answer → a pair,
    a label → a labelled answer; lines a crash cut short or rows that say neither are left out (the prepare stage
    counts them)."""
    from ownllm.data.preference import canonical, detect_format
    from ownllm.data.schema import RowError
    from ownllm.utils import read_appended_jsonl

    rows, _ = read_appended_jsonl(path)
    schema, out = detect_format(rows, "feedback"), []
    for row in rows:
        try:
            out.append(canonical(row, schema))
        except RowError:
            continue
    return out
