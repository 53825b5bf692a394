"""What the studio's work outside the server may use of this machine's memory.

Jobs (training, evaluation, export, documents) and the data doctor's preparation run in processes of
their own; each is watched, with its children, and stopped with a message when its resident memory
passes the limit (``--job-memory``, default 80 % of this machine's memory), so a file or a model too
large for the machine ends in a sentence, not in the kernel killing whatever it picks, the studio
included. An address-space limit (``RLIMIT_AS``) would be simpler, but CUDA and the tokenizers reserve
far more address space than they use, so the resident size is what is watched. Linux only (``/proc``);
elsewhere nothing is watched.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

DEFAULT_SHARE = 0.8
POLL_SECONDS = 0.5


def machine_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_limit() -> int | None:
    total = machine_memory()
    return int(total * DEFAULT_SHARE) if total else None


def limit_from_gb(gb: float | None) -> int | None:
    """``--job-memory GB`` in bytes (None: not given, so the studio takes ``default_limit()``)."""
    return int(gb * (1 << 30)) if gb else None


def gb(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB"


def _processes() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, resident bytes) of every process this user can read."""
    out, page = {}, os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(name)] = (int(fields[1]), int(fields[21]) * page)  # ppid, rss in pages
        except (OSError, IndexError, ValueError):
            continue
    return out


def tree(pid: int) -> tuple[list[int], int]:
    """``pid`` and its descendants, and their resident bytes together."""
    procs = _processes()
    members, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, (parent, _) in procs.items() if parent in frontier]
        members += frontier
    return members, sum(procs.get(p, (0, 0))[1] for p in members)


def stop_if_over(pid: int, limit: int) -> int | None:
    """Kill ``pid`` and its children if together they hold more than ``limit`` resident bytes; returns what
    they held then, else None."""
    members, used = tree(pid)
    if used <= limit:
        return None
    for p in members:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return used


def watching() -> bool:
    """Whether memory can be watched here (Linux's /proc)."""
    return os.path.isdir("/proc")


def wait_within(proc: subprocess.Popen, limit: int | None) -> int | None:
    """Wait for ``proc``; past ``limit`` resident bytes (with its children) kill the tree. Returns None when
    it ended by itself, else what it held when it was stopped."""
    if not limit or not watching():
        proc.wait()
        return None
    while proc.poll() is None:
        used = stop_if_over(proc.pid, limit)
        if used is not None:
            proc.wait()
            return used
        time.sleep(POLL_SECONDS)
    return None
