"""`ownllm plan`: does the run fit in memory and in the time budget — and what would."""
from __future__ import annotations

import dataclasses
import math
import re

from ownllm.errors import ConfigError
from ownllm.planning.estimate import Job, default_mfu, memory_gb, steps_per_epoch, train_time
from ownllm.planning.profiles import PRICES, Profile


def parse_duration(text) -> float:
    """'3h', '90m', '1h30m', '45s' or a number of hours → hours."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if not m or not any(m.groups()):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"cannot read the duration '{text}'", hint="e.g. 3h, 90m, 1h30m") from None
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h + mi / 60 + s / 3600


def _fit_memory(shape, job: Job, limit_gb: float) -> tuple[Job, list[str]]:
    """Cheapest changes that make the job fit: checkpointing, smaller micro-batch, QLoRA."""
    steps = []
    if memory_gb(shape, job)["total"] <= limit_gb:
        return job, steps
    if not job.gradient_checkpointing:
        job = dataclasses.replace(job, gradient_checkpointing=True)
        steps.append("gradient checkpointing on")
    while memory_gb(shape, job)["total"] > limit_gb and job.micro_batch > 1:
        job = dataclasses.replace(job, micro_batch=job.micro_batch // 2)
        steps.append(f"micro-batch {job.micro_batch} (accumulation raised, same effective batch)")
    if memory_gb(shape, job)["total"] > limit_gb and job.method in ("lora", "dora", "full"):
        job = dataclasses.replace(job, method="qlora", micro_batch=max(job.micro_batch, 1))
        steps.append("QLoRA (4-bit base weights)")
        while memory_gb(shape, job)["total"] > limit_gb and job.micro_batch > 1:
            job = dataclasses.replace(job, micro_batch=job.micro_batch // 2)
    return job, steps


def plan(spec, profile: Profile, *, examples: int, tokens_per_example: float, epochs: float = 3,
         method: str = "lora", budget_hours: float | None = None, micro_batch: int = 8, grad_accum: int = 4,
         lora_r: int = 16, gradient_checkpointing: bool = False, mfu: float | None = None, gpus: int = 1,
         price_per_hour: float | None = None, zero_stage: int = 0, replay_rows: int = 0,
         replay_tokens_per_example: float | None = None, lengths: list[int] | None = None,
         step_seconds: float = 0.0, drift_rows: int = 0) -> dict:
    """``examples``: the person's training rows; ``replay_rows``: forgetting protection's replayed rows of
    ``replay_tokens_per_example`` tokens (default: ``tokens_per_example``), trained beside them each epoch
    (the base model's distributions on them computed once, before training; ``drift_rows`` of them scored at
    each validation). ``lengths``: every training row's tokens, when known (the
    padding its batches compute). ``mfu`` and ``step_seconds``: utilisation and fixed seconds per micro-batch,
    as ``--calibrate`` measures them (default: a typical utilisation, no fixed cost)."""
    shape = spec  # the registry entry carries the shape the estimates need
    work = {"examples": examples, "tokens_per_example": tokens_per_example, "replay_rows": replay_rows,
            "replay_tokens": tokens_per_example if replay_tokens_per_example is None else replay_tokens_per_example,
            "lengths": lengths, "step_seconds": step_seconds, "drift_rows": drift_rows}
    seq = int(min(max(tokens_per_example * 1.5, 64), spec.context))
    precision = profile.best_precision
    job = Job(method=method, micro_batch=micro_batch, seq_len=seq, lora_r=lora_r,
              gradient_checkpointing=gradient_checkpointing, precision=precision, gpus=gpus,
              zero_stage=zero_stage, cpu=profile.kind == "cpu")
    mem = memory_gb(shape, job)
    fits = mem["total"] <= profile.memory_gb
    mfu = mfu or default_mfu(profile.kind, method)
    peak = profile.peak_tflops(precision)
    est = train_time(shape, job, peak, epochs=epochs, mfu=mfu, **work)
    per_epoch = est.hours / epochs
    price = PRICES.get(profile.name.lower(), 0.0) if price_per_hour is None else price_per_hour
    result = {
        "model": spec.alias, "hardware": profile.name, "hardware_source": profile.source, "method": method,
        "precision": precision, "peak_tflops": peak, "examples": examples, "replay_rows": replay_rows,
        "tokens_per_example": tokens_per_example, "replay_tokens_per_example": work["replay_tokens"],
        "step_seconds": step_seconds,
        "epochs": epochs, "memory_gb": mem, "memory_available_gb": profile.memory_gb, "fits_in_memory": fits,
        "flops": est.flops, "hours": round(est.hours, 5), "hours_per_epoch": round(per_epoch, 5),
        "tokens_per_second": round(est.tokens_per_second, 1), "mfu_assumed": mfu,
        "cost_usd": round(est.hours * price * gpus, 2), "price_per_hour_usd": price,
        "gpus": gpus, "zero_stage": zero_stage,
        "budget_hours": budget_hours,
        "fits_in_budget": None if budget_hours is None else est.hours <= budget_hours,
        "epochs_in_budget": None if budget_hours is None else round(budget_hours / per_epoch, 2),
    }
    result["recommendation"] = _recommend(shape, spec, profile, job, mfu, grad_accum, work, epochs, budget_hours)
    return result


def _recommend(shape, spec, profile, job, mfu, grad_accum, work: dict, epochs, budget) -> dict:
    fitted, changes = _fit_memory(shape, job, profile.memory_gb)
    mem = memory_gb(shape, fitted)["total"]
    if mem > profile.memory_gb:
        return {"fits": False, "why": f"needs {mem:.1f} GB even with QLoRA, micro-batch 1 and checkpointing; "
                f"{profile.name} has {profile.memory_gb:g} GB",
                "options": ["a smaller model (`ownllm models`)", "a GPU with more memory",
                            "several GPUs with DeepSpeed ZeRO-3"]}
    eff_batch = job.micro_batch * grad_accum
    accum = max(1, eff_batch // fitted.micro_batch)
    m = mfu if fitted.method == job.method else default_mfu(profile.kind, fitted.method)
    est = train_time(shape, fitted, profile.peak_tflops(fitted.precision), epochs=epochs, mfu=m, **work)
    per_epoch = est.hours / epochs
    rec = {"fits": True, "method": fitted.method, "micro_batch": fitted.micro_batch, "grad_accum": accum,
           "seq_len": fitted.seq_len, "gradient_checkpointing": fitted.gradient_checkpointing,
           "memory_gb": mem, "changes": changes, "epochs": epochs, "hours": round(est.hours, 5)}
    if budget is not None and est.hours > budget:
        fit_epochs = math.floor(budget / per_epoch * 100) / 100
        per_epoch_steps = steps_per_epoch(work["examples"] + work["replay_rows"], fitted.micro_batch, accum, job.gpus)
        rec.update(epochs=fit_epochs, max_steps=max(1, int(fit_epochs * per_epoch_steps)),
                   hours=round(fit_epochs * per_epoch, 5))
        rec["note"] = (f"{epochs:g} epochs need {est.hours:.1f} h; {fit_epochs:g} epochs fit in {budget:g} h. "
                       f"For all {epochs:g}: fewer examples, a shorter sequence, or faster hardware "
                       f"(e.g. ~{est.hours * profile.peak_tflops(fitted.precision) / 989:.1f} h on one H100)")
        if fit_epochs < 0.01:
            rec["fits"] = False
            rec["why"] = "not even 1% of one epoch fits in the budget"
    return rec


def matrix(examples: int = 100_000, tokens_per_example: float = 256, budget_hours: float = 3.0) -> list[dict]:
    """The guide's model-selection table, measured against physics."""
    from ownllm.models.registry import MODELS
    from ownllm.planning.profiles import PROFILES

    rows = []
    for alias in ("deepseek-r1-distill-qwen-1.5b", "deepseek/base-7b", "llama-2-13b", "llama-3.1-70b"):
        spec = MODELS[alias]
        for method in ("lora", "qlora", "full"):
            for gpu in ("rtx 3060", "rtx 4090", "a100 80gb", "h100"):
                p = plan(spec, PROFILES[gpu], examples=examples, tokens_per_example=tokens_per_example,
                         epochs=1, method=method, budget_hours=budget_hours)
                rec = p["recommendation"]
                # "fits" with the cheapest changes (checkpointing, smaller micro-batch); QLoRA is its own row
                fits = rec["fits"] and rec.get("method") == method
                hours = rec["hours"] / rec["epochs"] if fits and rec["epochs"] else p["hours_per_epoch"]
                rows.append({"model": alias, "params": spec.params, "method": method, "gpu": PROFILES[gpu].name,
                             "fits": fits, "memory_gb": rec["memory_gb"] if fits else p["memory_gb"]["total"],
                             "settings": ", ".join(rec.get("changes", [])) if fits else "",
                             "hours_per_epoch": round(hours, 2),
                             "epochs_in_3h": round(budget_hours / hours, 2) if fits and hours else None})
    return rows


def spec_for(name: str):
    """Registry entry, or a spec read from a local model folder's config.json."""
    import json
    import os

    from ownllm.errors import ModelNotFoundError
    from ownllm.models.registry import ModelSpec, lookup

    spec = lookup(name)
    if spec is not None:
        return spec
    path = os.path.join(name, "config.json")
    if not os.path.exists(path):
        raise ModelNotFoundError(f"the planner knows no model '{name}'",
                                 hint="use a registry alias (`ownllm models`) or a folder with config.json")
    with open(path, encoding="utf-8") as f:
        c = json.load(f)
    h, layers, i, v = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    heads = c.get("num_attention_heads", 1)
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or h // heads
    shape_params = layers * (2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * i) \
        + v * h * (1 if c.get("tie_word_embeddings", True) else 2)
    return ModelSpec(os.path.basename(os.path.normpath(name)), name, shape_params, c.get("max_position_embeddings", 2048),
                     "unknown", "chatml", layers, h, i, heads, kv, v, architecture=c.get("model_type", "llama"),
                     head_dim=head_dim)


def format_plan(p: dict) -> str:
    mem, rec = p["memory_gb"], p["recommendation"]
    lines = [line for line in [
        f"{p['model']} · {p['method']} · {p['hardware']} ({p['precision']}, peak {p['peak_tflops']:g} TFLOP/s — {p['hardware_source']})",
        f"data: {p['examples']:,} examples" + (f" + {p['replay_rows']:,} replayed general rows (forgetting protection)"
                                                if p.get("replay_rows") else "")
        + f" × {p['tokens_per_example']:g} tokens × {p['epochs']:g} epochs",
        (f"devices: {p['gpus']} data-parallel" + (f", DeepSpeed ZeRO-{p['zero_stage']}" if p["zero_stage"] else "")
         + " (memory per device; time for all; communication not modelled)") if p.get("gpus", 1) > 1 else "",
        f"memory: {mem['total']:.1f} GB of {p['memory_available_gb']:g} GB — "
        f"{'fits' if p['fits_in_memory'] else 'DOES NOT FIT'} (weights {mem['weights']}, trainable+AdamW "
        f"{mem['trainable_and_optimizer']}, activations {mem['activations']}, logits {mem['logits']}, overhead {mem['overhead']})",
        f"time: {p['flops']:.2e} FLOPs at {p['mfu_assumed']:.0%} utilisation"
        + (f" + {p['step_seconds']:g} s per micro-batch (calibrated)" if p.get("step_seconds") else "")
        + f" ≈ {p['tokens_per_second']:,.0f} tokens/s → "
        f"{p['hours']:.2f} h ({p['hours_per_epoch']:.2f} h per epoch); cost ≈ ${p['cost_usd']:.2f} "
        f"at ${p['price_per_hour_usd']:.2f}/h (example price)",
    ] if line]
    if p["budget_hours"] is not None:
        lines.append(f"budget: {p['budget_hours']:g} h — {'fits' if p['fits_in_budget'] else 'does NOT fit'}; "
                     f"{p['epochs_in_budget']:g} epochs fit in the budget")
    if not rec["fits"]:
        lines.append(f"recommendation: nothing fits — {rec['why']}; options: {', '.join(rec.get('options', []))}")
    else:
        lines.append(f"recommendation: {rec['method']}, micro-batch {rec['micro_batch']} × accumulation "
                     f"{rec['grad_accum']}, seq {rec['seq_len']}, gradient checkpointing "
                     f"{'on' if rec['gradient_checkpointing'] else 'off'}, {rec['epochs']:g} epochs"
                     + (f" (max {rec['max_steps']} steps)" if rec.get("max_steps") else "")
                     + f" ≈ {rec['hours']:.2f} h, {rec['memory_gb']:.1f} GB"
                     + (f"; changes: {', '.join(rec['changes'])}" if rec["changes"] else ""))
        if rec.get("note"):
            lines.append(f"  {rec['note']}")
    return "\n".join(lines)
