"""Background jobs of the studio: `ownllm train|eval|export|data from-docs` in their own process and session.

A job is the same CLI command a person would type, ``python -m ownllm ARGV``, run under
``python -m ownllm.studio.jobs RUN KIND -- ARGV``, which waits for it and records its exit code. It
survives a closed browser tab and a restarted studio (it is not the server's child in any way
that matters: its own session, output to ``RUN/studio/KIND.log``). What the studio knows
about it lives in the run directory, so a new server process picks it up:

- ``RUN/studio/KIND.json``: pid, command, start time (written by the server when it starts the job);
- ``RUN/studio/KIND.end.json``: exit code and end time (written by the job's waiting process).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from ownllm.rundir import RunDir, read_json
from ownllm.utils import atomic_write

KINDS = ("train", "eval", "export", "docs")
MEMORY_ENV = "OWNLLM_JOB_MEMORY"  # the job's memory limit in bytes, from the studio to the job's waiting process
_children: dict[int, subprocess.Popen] = {}  # jobs started by this server process: poll() reaps them


def _paths(run_dir: str, kind: str) -> tuple[str, str, str]:
    run = RunDir(run_dir)
    return run.studio_file(f"{kind}.json"), run.studio_file(f"{kind}.end.json"), run.studio_file(f"{kind}.log")


def pid_alive(pid: int | None) -> bool:
    """True while ``pid`` runs an ownllm process (a reused pid of another program does not count)."""
    if not pid:
        return False
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # finished, not yet reaped
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ownllm" in f.read()
    except (OSError, IndexError):  # no /proc (not Linux): the signal check is all there is
        return True


def start(run_dir: str, kind: str, argv: list[str], memory: int | None = None) -> dict:
    """Start ``ownllm ARGV`` for ``run_dir`` in the background, stopped past ``memory`` resident bytes
    (``studio.memory``); returns the job record."""
    job_path, end_path, log_path = _paths(run_dir, kind)
    os.makedirs(os.path.dirname(job_path), exist_ok=True)
    if os.path.exists(end_path):
        os.remove(end_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    if memory:
        env[MEMORY_ENV] = str(memory)
    with open(log_path, "ab") as log:
        log.write(f"\n$ ownllm {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "ownllm.studio.jobs", run_dir, kind, "--", *argv],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    _children[proc.pid] = proc
    record = {"kind": kind, "pid": proc.pid, "argv": argv, "started": round(time.time(), 1)}
    atomic_write(job_path, json.dumps(record, ensure_ascii=False))
    return state(run_dir, kind)


def state(run_dir: str, kind: str) -> dict | None:
    """The job's record with ``state``: running | done | stopped (SIGTERM before it could stop gracefully) |
    failed | vanished (killed without a word)."""
    job_path, end_path, log_path = _paths(run_dir, kind)
    job = read_json(job_path)
    if job is None:
        return None
    end = read_json(end_path)
    if pid_alive(job.get("pid")):
        job["state"] = "running"
    elif end is not None and end.get("pid") == job.get("pid"):
        job.update(end)
        job["state"] = {0: "done", 130: "stopped"}.get(end.get("rc"), "failed")
    else:
        job["state"] = "vanished"
    job["log_tail"] = log_tail(log_path)
    return job


def log_tail(path: str, lines: int = 12) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # tqdm redraws its bar with carriage returns: keep each line's last drawing
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:])


def stop(pid: int, own_session: bool) -> None:
    """Ask a training process to stop: SIGTERM, which it answers with a checkpoint and a clean end."""
    try:
        if own_session:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    """Entry of the job process: run ``python -m ownllm COMMAND`` in this session, then record how it ended.

    A stop sends SIGTERM to the whole session: the command answers it (a checkpoint, then exit 130);
    this process only waits, so the record is written whatever the command does.
    """
    from ownllm.studio.memory import gb, wait_within

    run_dir, kind, sep, *command = argv
    if sep != "--" or kind not in KINDS:
        raise SystemExit(f"usage: python -m ownllm.studio.jobs RUN_DIR {{{'|'.join(KINDS)}}} -- ARGV")
    _, end_path, _ = _paths(run_dir, kind)
    # a handler, not SIG_IGN: handlers are reset in the child at exec, an ignored signal would stay ignored
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    rc, end = 1, {}
    limit = int(os.environ.get(MEMORY_ENV) or 0) or None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ownllm", *command])
        used = wait_within(proc, limit)
        rc = proc.returncode
        rc = 128 - rc if rc < 0 else rc  # killed by signal N: the shell's 128 + N
        if used is not None:
            end["reason"] = (f"stopped: it used {gb(used)} of memory, past the studio's limit of {gb(limit)} "
                             "(--job-memory); a smaller model or batch, or a larger limit")
            print(f"\nownllm studio: {end['reason']}", flush=True)
    finally:
        atomic_write(end_path, json.dumps({"pid": os.getpid(), "rc": rc, "ended": round(time.time(), 1), **end}))
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
