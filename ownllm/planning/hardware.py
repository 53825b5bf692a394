"""What this machine is: CPU instruction sets, cores, RAM, disk, GPUs.

Cheap to import (no torch at import time); functions that need torch import it inside.
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field, asdict

from ownllm.device import cpu_has_fast_bf16


def total_ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def available_ram_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return total_ram_gb()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class GPU:
    name: str
    memory_gb: float
    capability: str
    bf16: bool


@dataclass
class Hardware:
    cpu: str
    cores: int
    ram_gb: float
    ram_available_gb: float
    disk_free_gb: float
    cpu_fast_bf16: bool
    gpus: list[GPU] = field(default_factory=list)
    mps: bool = False

    @property
    def accelerator(self) -> str:
        return "cuda" if self.gpus else ("mps" if self.mps else "cpu")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["accelerator"] = self.accelerator
        return d


def detect(path: str = ".") -> Hardware:
    """Detect this machine. Imports torch to ask about GPUs."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GPU(p.name, round(p.total_memory / 2**30, 1), f"{p.major}.{p.minor}",
                            bool(torch.cuda.is_bf16_supported())))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Hardware(cpu=cpu_name(), cores=os.cpu_count() or 1, ram_gb=round(total_ram_gb(), 1),
                    ram_available_gb=round(available_ram_gb(), 1),
                    disk_free_gb=round(shutil.disk_usage(path).free / 2**30, 1),
                    cpu_fast_bf16=cpu_has_fast_bf16(), gpus=gpus, mps=mps)


