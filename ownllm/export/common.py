"""What every export needs: a plain fp32 copy of the model to write, and prompts to check it with."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from ownllm.errors import ConfigError
from ownllm.models.templates import render_chat, turn_end_ids


def source_of(model) -> tuple[object, str]:
    """``(OwnModel, name)`` for an OwnModel, a run directory, an alias, a folder, a .gguf or a hub id."""
    from ownllm.models.generation import OwnModel
    from ownllm.models.load import load_model

    if isinstance(model, OwnModel):
        return model, model.name
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.fspath(model), device="cpu", merge=False), os.fspath(model)
    raise ConfigError(f"cannot export a {type(model).__name__}",
                      hint="pass a model from ownllm.load_model(), a run directory or a model name")


def plain_copy(own):
    """A float32 CPU copy of ``own.model`` with any LoRA/DoRA adapter folded in and bitsandbytes
    weights dequantized; the caller's model is left as it was."""
    import torch
    from peft import PeftModel

    from ownllm.models.load import merge_adapter

    model = own.model
    if isinstance(model, PeftModel):
        model = merge_adapter(copy.deepcopy(model), strict=True)[0]  # merge_and_unload works in place
    elif getattr(model, "hf_quantizer", None) is not None and getattr(model, "is_quantized", False):
        model = copy.deepcopy(model)
        model.dequantize()
    else:
        model = copy.deepcopy(model)
    if getattr(model, "is_quantized", False):
        raise ConfigError(f"{own.name} is quantized in a way that cannot be exported",
                          hint="export the run or model it came from instead")
    return model.to(device="cpu", dtype=torch.float32).eval()


def trained_chat_template(run_dir: str | None, tokenizer) -> str:
    """The chat template the run trained with: its --template, else the tokenizer's own, else ChatML."""
    from ownllm.models.templates import chat_template_for
    from ownllm.rundir import RunDir

    template = RunDir(run_dir).config().get("template") if run_dir else None
    return chat_template_for(tokenizer, template) or tokenizer.chat_template


def for_other_servers(model, tokenizer, run_dir: str | None) -> None:
    """Make a Hugging Face export read by vLLM and TGI as ownllm reads it: the chat template the run trained
    with goes into the tokenizer (tokenizer_config.json), and every token that ends an answer into the
    generation config's ``eos_token_id``. Changes the objects, before they are saved."""
    template = trained_chat_template(run_dir, tokenizer)
    tokenizer.chat_template = template
    ends = turn_end_ids(tokenizer, template)
    if model is not None and ends and getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = ends if len(ends) > 1 else ends[0]


def probe_prompts(run_dir: str | None, tokenizer, n: int = 8) -> list[str]:
    """Up to ``n`` rendered prompts from the run's test/val/train data (in the template it trained with),
    else two fixed ones."""
    from ownllm.rundir import RunDir
    from ownllm.utils import read_jsonl

    rows = []
    for split in ("test", "val", "train"):
        path = RunDir(run_dir).split(split) if run_dir else ""
        if path and os.path.exists(path):
            rows += [r for r in read_jsonl(path) if "messages" in r][:n - len(rows)]
        if len(rows) >= n:
            break
    if not rows:
        rows = [{"messages": [{"role": "user", "content": "Hello, how are you?"}, {}]},
                {"messages": [{"role": "user", "content": "人工智能的未来是什么？"}, {}]}]
    tmpl = trained_chat_template(run_dir, tokenizer)
    return [render_chat(tokenizer, r["messages"][:-1], tmpl, add_generation_prompt=True) for r in rows]


GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
LOGIT_TOLERANCE = 1e-3  # largest |logit difference| a float export (merged, adapter, ONNX) may show


CONFIDENT_MARGIN = 1.0  # logits between the reference's first and second choice: a choice rounding must not flip
# Fewer confident positions than this (random or barely trained weights lead by less) measure nothing:
# the share is reported as not measured, and its check warns instead of passing.
MIN_CONFIDENT_POSITIONS = 20


@dataclass
class Agreement:
    """How closely a candidate (an export read back) follows the reference model on the probe prompts."""

    max_logit_diff: float          # largest |logit difference| at any position of any prompt
    top1_agreement: float          # share of positions where both pick the same next token
    confident_top1: float | None   # the same share where the reference leads by >= CONFIDENT_MARGIN (None:
                                   # fewer than MIN_CONFIDENT_POSITIONS such positions, not measured)
    greedy_identical: bool         # every prompt's greedy continuation is the same, token for token
    greedy_matching_fraction: float  # mean share of each greedy continuation before the first difference
    same_tokens: bool              # the candidate's own tokenizer gives the reference's token ids
    confident_positions: int = 0   # how many positions confident_top1 was measured on


def choices_kept(reference_logits, candidate_logits) -> tuple[int, int, int, int]:
    """(positions where both pick the same next token, positions, the same where the reference leads
    by >= CONFIDENT_MARGIN, such confident positions) for two [positions, vocabulary] logit tensors."""
    same = reference_logits.argmax(-1) == candidate_logits.argmax(-1)
    top2 = reference_logits.topk(2, dim=-1).values
    confident = (top2[:, 0] - top2[:, 1]) >= CONFIDENT_MARGIN
    return int(same.sum()), len(same), int((same & confident).sum()), int(confident.sum())


def share(hits: int, of: int, at_least: int = 1) -> float | None:
    """hits / of, rounded; None (not measured) when there are fewer than ``at_least`` to count."""
    return round(hits / of, 4) if of and of >= at_least else None


def confident_share(hits: int, of: int) -> float | None:
    return share(hits, of, MIN_CONFIDENT_POSITIONS)


def confident_check(name: str, value: float | None, positions: int, at_least: float) -> dict:
    """The check on next-token choices where the trained model is confident: it warns, never passes,
    when there were too few such positions to measure (random or barely trained weights)."""
    from ownllm.export.manifest import check

    return check(name, value, at_least=at_least,
                 unmeasured=f"the trained model leads by {CONFIDENT_MARGIN:g} logit or more at only {positions} "
                            f"position(s) of the probe prompts (at least {MIN_CONFIDENT_POSITIONS} needed)")


def agreement(reference, candidate, tokenizer, prompts: list[str], candidate_tokenizer=None,
              new_tokens: int = 32) -> Agreement:
    """Compare two models on ``prompts`` followed by the reference's ``new_tokens`` greedy tokens: their
    logits and next-token choices at every position (all, and where the reference is confident: a
    near-tie may flip under rounding, a confident choice must not), and their own greedy text."""
    import torch

    worst, agree, total, sure, sure_total, identical, same_tokens, matching = 0.0, 0, 0, 0, 0, True, True, []
    ends = getattr(getattr(candidate, "generation_config", None), "eos_token_id", None)
    for text in prompts:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        if candidate_tokenizer is not None:
            same_tokens &= candidate_tokenizer(text, add_special_tokens=False)["input_ids"] == enc["input_ids"][0].tolist()
        enc = {k: v.to(reference.device) for k, v in enc.items()}
        start = enc["input_ids"].shape[1]
        with torch.inference_mode():
            kw = dict(max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id, **GREEDY)
            if ends is not None:  # both stop where the export's generation config says an answer ends
                kw["eos_token_id"] = ends
            full = reference.generate(**enc, **kw)
            ga, gb = full[0, start:].cpu(), candidate.generate(**enc, **kw)[0, start:].cpu()
            a, b = reference(input_ids=full).logits.float().cpu()[0], candidate(input_ids=full).logits.float().cpu()[0]
        worst = max(worst, float((a - b).abs().max()))
        counts = choices_kept(a, b)
        agree, total, sure, sure_total = agree + counts[0], total + counts[1], sure + counts[2], sure_total + counts[3]
        identical &= torch.equal(ga, gb)
        n = min(len(ga), len(gb))
        matching.append(next((i for i in range(n) if ga[i] != gb[i]), n) / max(1, len(ga)))
    return Agreement(round(worst, 6), share(agree, total), confident_share(sure, sure_total),
                     bool(identical), round(sum(matching) / max(1, len(matching)), 4), bool(same_tokens), sure_total)


# What a float export (merged, adapter, ONNX: no rounding of the weights) must show against the trained model.
FLOAT_THRESHOLDS = {"max_logit_diff": LOGIT_TOLERANCE, "top1_agreement": 0.99, "greedy_matching_fraction": 1.0}


def float_export_checks(a: Agreement, against: str) -> list[dict]:
    """The checks of an export that should compute what the trained model computes (no quantization)."""
    from ownllm.export.manifest import check

    t = FLOAT_THRESHOLDS
    return [check(f"max |logit difference| {against}", a.max_logit_diff, at_most=t["max_logit_diff"]),
            check("next-token choices agreeing", a.top1_agreement, at_least=t["top1_agreement"]),
            check("greedy 32-token continuations identical (share before the first difference)",
                  a.greedy_matching_fraction, at_least=t["greedy_matching_fraction"])]
