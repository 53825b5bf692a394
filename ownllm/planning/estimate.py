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
    per_layer = 2 * spec.hidden * spec.q_dim + 2 * spec.hidden * spec.kv_dim + 3 * spec.hidden * spec.intermediate
    return per_layer * spec.layers


def lora_params(spec, r: int) -> float:
    """LoRA parameters of rank ``r`` on all seven linear layers of each block."""
    h, i, q, kv = spec.hidden, spec.intermediate, spec.q_dim, spec.kv_dim
    pairs = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
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
    # Adapter methods hold the frozen weights in the run's precision, CPUs included (training.train).
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


def padding_waste(lengths: list[int], micro_batch: int, grouped: bool = False, draws: int = 64) -> float:
    """The share of the tokens a training step computes that are padding, for batches of ``micro_batch`` rows
    drawn from rows of these ``lengths``: at random, or (``grouped``) as transformers' length-grouped sampler
    draws them (shuffled, then sorted within mega-batches of min(50, rows // (4 x micro_batch)) micro-batches,
    at least one: on a small dataset that is no grouping at all). Deterministic."""
    import random

    if not lengths or micro_batch <= 1:
        return 0.0
    rng, used, padded = random.Random(0), 0, 0
    mega_size = max(1, min(len(lengths) // (micro_batch * 4), 50)) * micro_batch
    for _ in range(max(1, draws * micro_batch // len(lengths)) if grouped else draws):
        if grouped:
            order = rng.sample(lengths, len(lengths))
            for m in range(0, len(order), mega_size):
                mega = sorted(order[m:m + mega_size], reverse=True)
                for b in range(0, len(mega), micro_batch):
                    batch = mega[b:b + micro_batch]
                    used, padded = used + sum(batch), padded + max(batch) * len(batch)
        else:
            batch = rng.sample(lengths, min(micro_batch, len(lengths)))
            used, padded = used + sum(batch), padded + max(batch) * len(batch)
    return 1 - used / padded if padded else 0.0


GROUP_BY_LENGTH_WASTE = 0.15  # random batches wasting at least this share on padding are grouped by length


def sampling_strategy(lengths: list[int], micro_batch: int) -> str:
    """``group_by_length`` when random batches would waste at least GROUP_BY_LENGTH_WASTE of their tokens on
    padding, else ``random``. Grouping changes the order the model sees the data in; on the uniform-length
    sample it saved 8% padding, ran no faster and ended 2.9% higher in val loss after 30 steps
    (benchmarks/RESULTS.md), so it is used only where padding is really wasted. Training and the planner
    both ask this."""
    if len(lengths) <= micro_batch:
        return "random"
    return "group_by_length" if padding_waste(lengths, micro_batch) >= GROUP_BY_LENGTH_WASTE else "random"


def computed_per_used_token(lengths: list[int] | None, micro_batch: int) -> float:
    """Tokens a step computes per token of data (padding included), with the sampler training will choose."""
    if not lengths:
        return 1.0
    return 1 / (1 - padding_waste(lengths, micro_batch, sampling_strategy(lengths, micro_batch) == "group_by_length"))


def train_time(shape, job: Job, peak_tflops: float, examples: int, tokens_per_example: float,
               epochs: float, mfu: float, val_fraction: float = 0.1, replay_rows: int = 0,
               replay_tokens: float = 0.0, lengths: list[int] | None = None, step_seconds: float = 0.0,
               drift_rows: int = 0) -> TimeEstimate:
    """Hours for ``epochs`` over ``examples`` rows of ``tokens_per_example`` tokens; validation (forward only,
    val_fraction of the data) included. ``replay_rows`` of ``replay_tokens`` tokens each (forgetting
    protection) train beside them; the base model's distributions on them are computed once, before
    training (one forward pass: 2N FLOPs per replay token, not per epoch), and each validation (counted, like
    the domain's, once per epoch) also scores ``drift_rows`` of them for drift (``protect.DRIFT_ROWS``).
    ``lengths``: every row's tokens when known, for the padding the batches compute (replay rows included
    here). ``step_seconds``: a fixed cost per micro-batch (optimizer, framework), as ``--calibrate`` measures
    it; the rest runs at ``mfu`` of the peak."""
    per_token = flops_per_token(shape, job)
    replay_total = replay_rows * replay_tokens * epochs
    tokens = examples * tokens_per_example * epochs + replay_total
    val_tokens = examples * val_fraction * tokens_per_example * epochs
    if val_fraction and replay_rows:
        val_tokens += min(drift_rows, replay_rows) * replay_tokens * epochs
    padding = computed_per_used_token(list(lengths or []) + [round(replay_tokens)] * replay_rows if lengths else None,
                                      job.micro_batch)
    base_once = replay_rows * replay_tokens * 2 * shape.params
    flops = (tokens * per_token + base_once) * padding + val_tokens * 2 * shape.params
    rate = peak_tflops * 1e12 * mfu * job.gpus
    micro_batches = math.ceil((examples + replay_rows) / (job.micro_batch * max(1, job.gpus))) * epochs
    seconds = flops / rate + micro_batches * step_seconds
    return TimeEstimate(tokens, flops, tokens / seconds if seconds else 0.0, seconds / 3600, mfu)
