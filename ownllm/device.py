"""Where and in what precision this process computes: the CPU's instruction sets, the device and the
precision a run resolves to. The ground floor: it imports nothing of ours but errors, and torch only
inside the functions that need it.
"""
from __future__ import annotations


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """True only with native bf16 matmul (AVX512-BF16 or AMX); emulated bf16 is far slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_device(device: str = "auto") -> str:
    """'auto' → cuda, then mps, then cpu. An explicit device that is not here is an error."""
    import torch

    from ownllm.errors import HardwareError

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HardwareError(f"device '{device}' was asked for, but no CUDA GPU is visible here",
                            hint="use --device cpu (or auto), or check `ownllm doctor`")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HardwareError("device 'mps' was asked for, but Apple MPS is not available here",
                            hint="use --device cpu (or auto)")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise HardwareError(f"unknown device '{device}'", hint="use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """Pick fp32/fp16/bf16 for the device. On a CPU, 'auto' is fp32 unless bf16 is native.

    Measured on an AVX2-only EPYC: fp32 matmul ~120 GFLOP/s, bf16 did not finish in minutes.
    """
    import torch

    from ownllm.errors import HardwareError

    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise HardwareError(f"unknown precision '{precision}'", hint="use auto, fp32, fp16 or bf16")
    if device.startswith("cuda"):
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise HardwareError("bf16 was asked for, but this GPU has no bf16 support",
                                hint="use --precision fp16 or auto")
        return precision
    if device == "mps":
        return "fp32" if precision == "auto" else precision
    # CPU
    if precision == "auto":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16":
        raise HardwareError("fp16 mixed precision needs a GPU; this run is on the CPU",
                            hint="use --precision auto (fp32 here) or run on a CUDA GPU")
    if precision == "bf16" and not cpu_has_fast_bf16():
        raise HardwareError("bf16 was asked for, but this CPU has no native bf16 (AVX512-BF16/AMX): "
                            "it would be many times slower than fp32",
                            hint="use --precision auto (fp32 here)")
    return precision


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
