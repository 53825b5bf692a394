"""Memory and time of a fine-tuning run, from the model's shape and the hardware's peak.

Memory: weights (by dtype; NF4 ≈ 0.52 bytes/param on the quantised linears), trainable
parameters with gradients and AdamW state (16 bytes each in mixed precision), activations per
layer (all of them, or only layer inputs with gradient checkpointing), the fp32 logits buffer
(micro-batch × sequence × vocabulary) and framework overhead.
Time: model FLOPs per token (6N full, 4N LoRA/QLoRA — no weight gradients for frozen weights —
plus attention, +2N when activations are recomputed) × tokens ÷ (peak × utilisation).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GB = 1024 ** 3
NF4_BYTES = 0.52        # 4-bit NF4 with double-quantised absmax constants
ADAMW_BYTES = 16        # fp32 weight/master + gradient + two moments
DEFAULT_MFU = {"cpu": 0.45, "gpu": 0.40, "qlora": 0.28}


def steps_per_epoch(rows: int, micro_batch: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Optimizer steps in one epoch, as transformers.Trainer counts them: every process draws
    ceil(rows / (micro_batch x processes)) micro-batches (the last one may be short), and a partial
    accumulation at the end of the epoch still makes a step. The one formula for training, the
    time budget, ``--additional-epochs`` and the planner."""
    batches = math.ceil(rows / (micro_batch * max(1, processes)))
    return max(1, math.ceil(batches / max(1, grad_accum)))


def linear_params(spec) -> float:
    """Parameters in the attention and MLP projections (what LoRA adapts and NF4 quantises).

    ``spec`` is a registry ModelSpec (or anything with its shape fields).
    """
    kv = spec.hidden * spec.kv_heads // spec.heads
    per_layer = 2 * spec.hidden * spec.hidden + 2 * spec.hidden * kv + 3 * spec.hidden * spec.intermediate
    return per_layer * spec.layers


def lora_params(spec, r: int) -> float:
    """LoRA parameters of rank ``r`` on all seven linear layers of each block."""
    kv = spec.hidden * spec.kv_heads // spec.heads
    h, i = spec.hidden, spec.intermediate
    pairs = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
    return spec.layers * r * sum(a + b for a, b in pairs)


@dataclass
class Job:
    method: str = "lora"          # lora | qlora | dora | full | prefix
    micro_batch: int = 8
    seq_len: int = 256
    lora_r: int = 16
    gradient_checkpointing: bool = False
    precision: str = "bf16"       # bf16 | fp16 | fp32
    gpus: int = 1
    zero_stage: int = 0           # DeepSpeed ZeRO stage (shards optimizer state / grads / weights)
    cpu: bool = False             # a ~1.2 GB Python/torch process; full fine-tuning there keeps fp32 activations


def trainable_params(shape, job: Job) -> float:
    if job.method == "full":
        return shape.params
    if job.method == "prefix":
        return shape.layers * 2 * 20 * shape.hidden
    return lora_params(shape, job.lora_r) * (1.01 if job.method == "dora" else 1.0)


def memory_gb(shape, job: Job) -> dict:
    """Peak memory per device, in GiB, with its parts."""
    # Adapter methods hold the frozen weights in the run's precision, CPUs included (training.loop).
    half = 2 if job.precision in ("bf16", "fp16") and not (job.cpu and job.method == "full") else 4
    if job.method == "qlora":
        weights = linear_params(shape) * NF4_BYTES + (shape.params - linear_params(shape)) * 2
    elif job.method == "full":
        weights = 0.0  # counted in the optimizer state below (fp32 master weights)
    else:
        weights = shape.params * half
    trainable = trainable_params(shape, job)
    # AdamW: fp32 master/weight + two moments (12 bytes), and the fp32 gradient (4 bytes). DeepSpeed ZeRO
    # shards the first across the data-parallel devices from stage 1, the gradients from stage 2 and the
    # (half-precision) weights from stage 3.
    shards = max(1, job.gpus)
    states = trainable * (ADAMW_BYTES - 4) / (shards if job.zero_stage >= 1 else 1)
    grads = trainable * 4 / (shards if job.zero_stage >= 2 else 1)
    optimizer = states + grads
    if job.zero_stage >= 3:
        weights /= shards
    tokens = job.micro_batch * job.seq_len
    # Per token and layer (Korthikanti et al. 2022, with SwiGLU and fused/flash attention):
    # attention ≈ 15h values, MLP ≈ 2h + 8i values, two norms ≈ 4h, each `half` bytes / 2 per value pair.
    per_layer = tokens * (21 * shape.hidden + 8 * shape.intermediate) * half / 2
    if job.gradient_checkpointing:
        activations = tokens * shape.hidden * half * shape.layers + per_layer
    else:
        activations = per_layer * shape.layers
    logits = tokens * shape.vocab * 4 * 2            # fp32 logits and their gradient
    # CUDA context and kernels on a GPU; on a CPU the process itself (torch, transformers, tokenizer)
    overhead = 1.2 * GB if job.cpu else 0.6 * GB
    parts = {"weights": weights, "trainable_and_optimizer": optimizer, "activations": activations,
             "logits": logits, "overhead": overhead}
    total = sum(parts.values()) * 1.08               # allocator fragmentation
    return {"total": round(total / GB, 3), **{k: round(v / GB, 3) for k, v in parts.items()}}


def flops_per_token(shape, job: Job) -> float:
    n = shape.params
    base = 6 * n if job.method == "full" else 4 * n
    if job.gradient_checkpointing:
        base += 2 * n
    attention = 6 * shape.layers * job.seq_len * shape.hidden
    return base + attention


def default_mfu(kind: str, method: str) -> float:
    if kind == "cpu":
        return DEFAULT_MFU["cpu"]
    return DEFAULT_MFU["qlora"] if method == "qlora" else DEFAULT_MFU["gpu"]


@dataclass
class TimeEstimate:
    tokens: float
    flops: float
    tokens_per_second: float
    hours: float
    mfu: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def train_time(shape, job: Job, peak_tflops: float, examples: int, tokens_per_example: float,
               epochs: float, mfu: float, val_fraction: float = 0.1, base_forward_share: float = 0.0) -> TimeEstimate:
    """Hours for ``epochs`` over ``examples``; validation (forward only, val_fraction of the data) included.
    ``base_forward_share``: the share of examples that also run a forward pass of the base model (forgetting
    protection's replay rows, 2N FLOPs per token more)."""
    per_token = flops_per_token(shape, job)
    tokens = examples * tokens_per_example * epochs
    val_tokens = examples * val_fraction * tokens_per_example * epochs
    flops = tokens * per_token + val_tokens * 2 * shape.params + tokens * base_forward_share * 2 * shape.params
    rate = peak_tflops * 1e12 * mfu * job.gpus
    tps = rate / per_token
    return TimeEstimate(tokens, flops, tps, flops / rate / 3600, mfu)
