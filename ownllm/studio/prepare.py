"""The data doctor for the studio, in a process of its own: reading a person's files (a large JSONL, a
Parquet file read into rows, a folder of documents) can take more memory than the server should risk.

``Preparer`` keeps one warm worker, ``python -m ownllm.studio.prepare``, that runs ``prepare_dataset``
for each request sent over its stdin and answers on its stdout as JSON lines, so its tokenizers stay
loaded between clicks (a fresh process per request took 5 s here, most of it loading them). The worker is
watched like a job (``studio.memory``): past the limit it is killed, the request gets a 507 naming the
limit, and the next request starts a new one. A person's mistake comes back as the same error, raised
here; the worker leaves after ``IDLE_SECONDS`` without a request, or when the studio goes.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading

from ownllm import errors
from ownllm.web.common import APIError

IDLE_SECONDS = 600


class Preparer:
    """One worker process for the studio's preparations, one request at a time."""

    def __init__(self, memory: int | None):
        self.memory = memory
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def prepare(self, inputs: list[str], out: str | None, options: dict) -> dict:
        """``prepare_dataset(inputs, out, **options)`` in the worker; its report (no private ``_`` keys)."""
        with self._lock:
            proc = self._worker()
            proc.stdin.write(json.dumps({"inputs": inputs, "out": out, "options": options}, ensure_ascii=False)
                             + "\n")
            proc.stdin.flush()
            answer = self._answer(proc)
        if "error" in answer:
            cls = getattr(errors, answer["kind"], errors.OwnLLMError)
            if not (isinstance(cls, type) and issubclass(cls, errors.OwnLLMError)) or cls is errors.ConfigError:
                cls = errors.OwnLLMError  # ConfigError takes a list of problems: the message says them already
            raise cls(answer["error"], hint=answer.get("hint"), where=answer.get("where"))
        return answer["report"]

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "ownllm.studio.prepare"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1)
        return self._proc

    def _answer(self, proc: subprocess.Popen) -> dict:
        """The worker's answer line, watching its memory while it works."""
        from ownllm.studio.memory import POLL_SECONDS, gb, stop_if_over, watching

        while True:
            ready, _, _ = select.select([proc.stdout], [], [], POLL_SECONDS)
            if ready:
                line = proc.stdout.readline()
                if line:
                    return json.loads(line)
            if proc.poll() is not None:
                raise APIError(500, f"the data preparation ended without an answer (exit code {proc.returncode}); "
                                    "its message is in the studio's terminal", kind="server_error")
            if self.memory and watching() and stop_if_over(proc.pid, self.memory) is not None:
                proc.wait()
                raise APIError(507, f"preparing these files needed more than {gb(self.memory)} of memory, the "
                                    "studio's limit (--job-memory): split the files, or start the studio with a "
                                    "larger limit", code="memory_limit", kind="server_error")


def main() -> int:
    """The worker: a request a line on stdin, an answer a line on stdout (``{"report": ...}``, or ``{"error",
    "hint", "where", "kind"}`` for a person's mistake); anything else it prints goes to stderr."""
    from ownllm.data.prepare import prepare_dataset

    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # prints and progress bars: the studio's terminal, never the answer channel
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], IDLE_SECONDS)
        line = sys.stdin.readline() if ready else ""
        if not line:  # the studio is gone, or nothing was asked for a while
            return 0
        request = json.loads(line)
        try:
            prepared = prepare_dataset(request["inputs"], request["out"], **request["options"])
            answer = {"report": {k: v for k, v in prepared.report.items() if not k.startswith("_")}}
        except errors.OwnLLMError as e:
            answer = {"error": e.message, "hint": e.hint, "where": e.where, "kind": type(e).__name__}
        answers.write(json.dumps(answer, ensure_ascii=False, default=str) + "\n")
        answers.flush()


if __name__ == "__main__":
    raise SystemExit(main())
