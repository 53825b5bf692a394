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
    P("RTX 3060 Ti", 8, 16.2, 32.4, 32.4, 448, "NVIDIA Ampere GA10x whitepaper (FP16/BF16 tensor, FP32 accumulate)"),
    P("RTX 3060 Laptop", 6, 10.9, 21.8, 21.8, 336,
      "NVIDIA RTX 30 laptop specifications; the clock depends on the laptop's power limit (conservative)"),
    P("RTX 3090", 24, 35.6, 71.0, 71.0, 936, "NVIDIA Ampere GA10x whitepaper (FP16/BF16 tensor, FP32 accumulate)"),
    P("RTX 4080", 16, 48.7, 97.5, 97.5, 717, "NVIDIA Ada Lovelace whitepaper (FP16/BF16 tensor, FP32 accumulate)"),
    P("RTX 4090", 24, 82.6, 165.2, 165.2, 1008, "NVIDIA Ada Lovelace whitepaper (FP16/BF16 tensor, FP32 accumulate)"),
    P("A10G", 24, 31.2, 125.0, 125.0, 600, "NVIDIA A10 datasheet (A10G is AWS's variant of it)"),
    P("L4", 24, 30.3, 121.0, 121.0, 300, "NVIDIA L4 datasheet"),
    P("L40", 48, 90.5, 181.0, 181.0, 864, "NVIDIA L40 datasheet"),
    P("L40S", 48, 91.6, 362.0, 362.0, 864, "NVIDIA L40S datasheet"),
    P("T4", 16, 8.1, 0.0, 65.0, 320, "NVIDIA T4 datasheet (no bf16)"),
    P("V100", 32, 15.7, 0.0, 125.0, 900, "NVIDIA V100 datasheet (SXM2; no bf16)"),
    P("A100 40GB", 40, 19.5, 312.0, 312.0, 1555, "NVIDIA A100 datasheet (SXM)"),
    P("A100 40GB PCIe", 40, 19.5, 312.0, 312.0, 1555, "NVIDIA A100 datasheet (PCIe)"),
    P("A100 80GB", 80, 19.5, 312.0, 312.0, 2039, "NVIDIA A100 datasheet (SXM)"),
    P("A100 80GB PCIe", 80, 19.5, 312.0, 312.0, 1935, "NVIDIA A100 datasheet (PCIe)"),
    P("H100", 80, 67.0, 989.0, 989.0, 3350, "NVIDIA H100 datasheet (SXM)"),
    P("H100 PCIe", 80, 51.0, 756.0, 756.0, 2000, "NVIDIA H100 datasheet (PCIe)"),
    P("H100 NVL", 94, 60.0, 835.0, 835.0, 3900, "NVIDIA H100 datasheet (NVL)"),
    P("H200", 141, 67.0, 989.0, 989.0, 4800, "NVIDIA H200 datasheet (SXM)"),
]}
ALIASES = {"4090": "rtx 4090", "3060": "rtx 3060", "a100": "a100 80gb", "a10": "a10g"}

PRICES = {"rtx 3060": 0.10, "rtx 4090": 0.40, "a10g": 1.01, "l4": 0.80, "t4": 0.53, "a100 40gb": 3.67,
          "a100 80gb": 4.10, "h100": 6.98, "h200": 7.90, "l40s": 1.90, "this cpu": 0.0}

# Words that name a variant of a chip; a name matches a profile only when the variants agree
# ("RTX 3060 Ti" is not an RTX 3060, "H100 PCIe" not the SXM H100). SXM is the default form.
_VARIANTS = {"ti", "laptop", "pcie", "nvl", "super"}
_NOISE = {"nvidia", "geforce", "tesla", "gpu", "graphics", "sxm", "sxm2", "sxm4", "sxm5", "mobile"}


def _parse(name: str) -> tuple[str | None, frozenset, float | None]:
    """(chip, variants, memory GB) of a GPU name: "NVIDIA A100-SXM4-80GB" -> ("a100", {}, 80)."""
    import re

    words = re.findall(r"[a-z0-9]+", name.lower().replace("laptop gpu", "laptop"))
    words = ["laptop" if w == "mobile" else w for w in words]
    memory = next((float(w[:-2]) for w in words if re.fullmatch(r"\d+gb", w)), None)
    chip = next((w for w in words if w not in _NOISE and w not in _VARIANTS and w != "rtx"
                 and not re.fullmatch(r"\d+gb", w)), None)
    return chip, frozenset(w for w in words if w in _VARIANTS), memory


def match_gpu(name: str, memory_gb: float | None = None) -> Profile | None:
    """The profile of a GPU by its name as the driver or a person writes it, or None.

    Chip and variant must both agree; among variants with different memory (A100 40/80 GB) the one
    named in the name, else the one nearest ``memory_gb``, else the first listed.
    """
    chip, variants, named_memory = _parse(name)
    if chip is None:
        return None
    found = [p for p in PROFILES.values() if _parse(p.name)[:2] == (chip, variants)]
    if not found and not variants and chip in ALIASES:  # "NVIDIA A10" is priced and measured as the A10G
        found = [PROFILES[ALIASES[chip]]]
    if not found:
        return None
    memory = named_memory or memory_gb
    if memory is None:
        return found[0] if len(found) == 1 else PROFILES.get(ALIASES.get(chip, ""), found[0])
    return min(found, key=lambda p: abs(p.memory_gb - memory))


def get_profile(name: str) -> Profile:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in ("cpu", "this cpu", "this-cpu", "this machine"):
        return this_cpu()
    if key in PROFILES:
        return PROFILES[key]
    matched = match_gpu(name)
    if matched:
        return matched
    import difflib

    close = difflib.get_close_matches(key, list(PROFILES), n=3)
    raise ConfigError(f"unknown GPU profile '{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                      hint=f"known: {', '.join(p.name for p in PROFILES.values())}, cpu")


def unknown_gpu(name: str, memory_gb: float, bf16: bool) -> Profile:
    """A GPU the table does not know: its own memory, and the table's lowest peaks and bandwidth
    (a conservative guess, so that a plan errs on the long side)."""
    half = min(p.fp16_tflops for p in PROFILES.values())
    return Profile(name, memory_gb, min(p.fp32_tflops for p in PROFILES.values()), half if bf16 else 0.0, half,
                   min(p.bandwidth_gbs for p in PROFILES.values()),
                   f"unknown GPU: using its memory and a conservative peak ({half:g} TFLOP/s half precision)")


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
        from ownllm.device import cpu_has_fast_bf16
        from ownllm.planning.hardware import available_ram_gb, cpu_name

        fp32 = measure_matmul_tflops("fp32")
        bf16 = measure_matmul_tflops("bf16") if cpu_has_fast_bf16() else 0.0
        _CPU_CACHE["cpu"] = Profile("this CPU", round(available_ram_gb(), 1), round(fp32, 3), round(bf16, 3), 0.0,
                                    0.0, f"measured here: {cpu_name()}, 1024² matmul", kind="cpu")
    return _CPU_CACHE["cpu"]


def this_machine() -> Profile:
    """The profile of the machine this runs on: its first GPU's (with the memory the driver reports),
    else this CPU's (measured)."""
    import dataclasses

    from ownllm.planning.hardware import detect

    hw = detect()
    if not hw.gpus:
        return this_cpu()
    gpu = hw.gpus[0]
    profile = match_gpu(gpu.name, gpu.memory_gb)
    if profile is None:
        return unknown_gpu(gpu.name, gpu.memory_gb, gpu.bf16)
    return dataclasses.replace(profile, memory_gb=gpu.memory_gb)
