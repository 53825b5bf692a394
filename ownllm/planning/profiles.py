"""Hardware profiles for the planner: memory, dense peak FLOP/s and memory bandwidth.

Figures are the vendors' dense (no sparsity) tensor-core numbers from their datasheets; bf16 and
fp16 are with fp32 accumulation, as training uses them. Cloud prices are EXAMPLES (on-demand, USD per
hour, late 2025) — edit ``PRICES`` or pass --price-per-hour for yours.
"""
from __future__ import annotations

from dataclasses import dataclass

from ownllm.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    memory_gb: float
    fp32_tflops: float
    bf16_tflops: float      # 0: no bf16 (the run uses fp16)
    fp16_tflops: float
    bandwidth_gbs: float
    source: str
    kind: str = "gpu"

    def peak_tflops(self, precision: str) -> float:
        if precision == "fp32":
            return self.fp32_tflops
        if precision == "bf16" and self.bf16_tflops:
            return self.bf16_tflops
        return self.fp16_tflops or self.fp32_tflops

    @property
    def best_precision(self) -> str:
        if self.kind == "cpu":
            return "bf16" if self.bf16_tflops > self.fp32_tflops else "fp32"
        return "bf16" if self.bf16_tflops else "fp16"


P = Profile
PROFILES = {p.name.lower(): p for p in [
    P("RTX 3060", 12, 12.7, 25.4, 25.4, 360, "NVIDIA Ampere GA10x whitepaper (FP16/BF16 tensor, FP32 accumulate)"),
    P("RTX 4090", 24, 82.6, 165.2, 165.2, 1008, "NVIDIA Ada Lovelace whitepaper (FP16/BF16 tensor, FP32 accumulate)"),
    P("A10G", 24, 31.2, 125.0, 125.0, 600, "NVIDIA A10 datasheet (A10G is AWS's variant of it)"),
    P("L4", 24, 30.3, 121.0, 121.0, 300, "NVIDIA L4 datasheet"),
    P("T4", 16, 8.1, 0.0, 65.0, 320, "NVIDIA T4 datasheet (no bf16)"),
    P("A100 40GB", 40, 19.5, 312.0, 312.0, 1555, "NVIDIA A100 datasheet"),
    P("A100 80GB", 80, 19.5, 312.0, 312.0, 2039, "NVIDIA A100 datasheet (SXM)"),
    P("H100", 80, 67.0, 989.0, 989.0, 3350, "NVIDIA H100 datasheet (SXM)"),
    P("H200", 141, 67.0, 989.0, 989.0, 4800, "NVIDIA H200 datasheet (SXM)"),
]}
ALIASES = {"4090": "rtx 4090", "3060": "rtx 3060", "a100": "a100 80gb", "a10": "a10g"}

PRICES = {"rtx 3060": 0.10, "rtx 4090": 0.40, "a10g": 1.01, "l4": 0.80, "t4": 0.53, "a100 40gb": 3.67,
          "a100 80gb": 4.10, "h100": 6.98, "h200": 7.90, "this cpu": 0.0}


def get_profile(name: str) -> Profile:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in ("cpu", "this cpu", "this-cpu", "this machine"):
        return this_cpu()
    if key not in PROFILES:
        import difflib

        close = difflib.get_close_matches(key, list(PROFILES), n=3)
        raise ConfigError(f"unknown GPU profile '{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                          hint=f"known: {', '.join(p.name for p in PROFILES.values())}, cpu")
    return PROFILES[key]


def measure_matmul_tflops(dtype_name: str = "fp32", n: int = 1024, repeats: int = 6) -> float:
    """This machine's matrix-multiply speed (one square matmul size), in TFLOP/s."""
    import time

    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


_CPU_CACHE: dict = {}


def this_cpu() -> Profile:
    """A profile for this CPU, its peak measured with a matmul (cached for the process)."""
    if "cpu" not in _CPU_CACHE:
        from ownllm.planning.hardware import available_ram_gb, cpu_has_fast_bf16, cpu_name

        fp32 = measure_matmul_tflops("fp32")
        bf16 = measure_matmul_tflops("bf16") if cpu_has_fast_bf16() else 0.0
        _CPU_CACHE["cpu"] = Profile("this CPU", round(available_ram_gb(), 1), round(fp32, 3), round(bf16, 3), 0.0,
                                    0.0, f"measured here: {cpu_name()}, 1024² matmul", kind="cpu")
    return _CPU_CACHE["cpu"]


def this_machine() -> Profile:
    """The profile of the machine this runs on: its first GPU's, else this CPU's (measured)."""
    from ownllm.planning.hardware import detect

    hw = detect()
    if not hw.gpus:
        return this_cpu()
    name = hw.gpus[0].name.lower()
    for key, p in PROFILES.items():
        if key.replace("rtx ", "") in name:
            return p
    raise ConfigError(f"no profile for the GPU '{hw.gpus[0].name}'", hint="name the closest one with --gpu")
