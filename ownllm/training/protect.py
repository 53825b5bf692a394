"""Forgetting protection: keep the base model's general ability while an adapter learns the domain.

Replay rows are general prompts (``resources/replay_prompts.txt``, none of them a probe question)
followed by the base model's own greedy answer, generated once per base model and cached. They
are mixed into the training rows (never into validation, so early stopping and the best
checkpoint follow the domain alone). On replay rows the loss is not cross-entropy but the KL
divergence from the base model's next-token distribution to the tuned model's at every answer
position: the adapter is pulled back to what the base model would have said. For LoRA/DoRA/QLoRA
the base is the same network with the adapter switched off, so there is no second copy in memory.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from importlib import resources

REPLAY_NEW_TOKENS = 40   # keeps replay rows short (the general prompt plus a sentence or two)
# What the planner assumes a replay row costs before the run has made them: on the embedded model, with
# its chat template's default system prompt, the prompt and up to 40 answer tokens, they average 81.
REPLAY_TOKENS_PER_ROW = 80


@dataclass(frozen=True)
class Protection:
    replay_ratio: float   # replay rows per training row
    kl_weight: float      # weight of a replay token's KL against a domain token's cross-entropy
    min_rows: int = 16    # at least this many replay rows on small datasets


# Chosen by benchmarks/forgetting.py (RESULTS.md): KL weight 2 kept as many general answers as 1 on the
# support sample and more on the clinic one (91% vs 90%), with better domain accuracy there (58% vs 42%)
# and half the general-perplexity rise, at the same cost; more replayed rows cost time in proportion.
LEVELS = {"off": None, "default": Protection(replay_ratio=0.35, kl_weight=2.0),
          "strong": Protection(replay_ratio=0.75, kl_weight=3.0)}
METHODS = ("lora", "dora", "qlora")  # the base is the same network with the adapter switched off


def protection_for(cfg) -> Protection | None:
    """The protection this run gets: None for --protect off and for methods without a switchable adapter."""
    level = LEVELS[cfg.protect]
    return level if level is not None and cfg.method in METHODS else None


def replay_prompts() -> list[str]:
    text = resources.files("ownllm.resources").joinpath("replay_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def replay_count(n_train: int, protection: Protection) -> int:
    return min(len(replay_prompts()), max(protection.min_rows, math.ceil(protection.replay_ratio * n_train)))


def replay_for_plan(level: str, method: str, n_train: int) -> int:
    """How many replay rows ``ownllm train --protect LEVEL`` adds to ``n_train`` rows (for the planner)."""
    protection = LEVELS[level]
    return replay_count(n_train, protection) if protection is not None and method in METHODS else 0


def _cache_path(model_name: str, template: str | None) -> str:
    from ownllm.models.load import cache_dir, fingerprint

    key = fingerprint(model_name, template or "", "\n".join(replay_prompts()), str(REPLAY_NEW_TOKENS))
    return cache_dir("replay", f"{key}.jsonl")


def base_answers(model, tokenizer, cfg) -> list[dict]:
    """The base model's greedy answer to every replay prompt, as chat rows; cached per base model.

    ``model`` is the model being trained (its adapter is switched off while it answers)."""
    from ownllm.data.render import chat_template_for
    from ownllm.evaluation.measure import generate_greedy
    from ownllm.utils import read_jsonl, write_jsonl

    template = chat_template_for(tokenizer, cfg.template)
    path = _cache_path(cfg.model, template)
    if os.path.exists(path):
        return read_jsonl(path)
    prompts = replay_prompts()
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], chat_template=template,
                                              tokenize=False, add_generation_prompt=True) for p in prompts]
    was_training = model.training
    model.eval()
    with model.disable_adapter():
        answers, _, _ = generate_greedy(model, tokenizer, rendered, REPLAY_NEW_TOKENS, batch=16, strip=False)
    model.train(was_training)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a.strip() or a}]}
            for p, a in zip(prompts, answers) if a]
    write_jsonl(path, rows)
    return rows


def replay_rows(model, tokenizer, cfg, n_train: int, protection: Protection) -> list[dict]:
    """``replay_count`` replay rows, drawn with the run's seed."""
    rows = base_answers(model, tokenizer, cfg)
    return random.Random(cfg.seed).sample(rows, min(len(rows), replay_count(n_train, protection)))


def kl_sum(tuned_logits, base_logprobs):
    """Sum over positions of KL(base || tuned) between next-token distributions; ``tuned_logits`` and
    ``base_logprobs`` are (positions, vocabulary). Zero when the two models agree; its gradient with
    respect to the tuned logits is softmax(tuned) - softmax(base) at each position."""
    import torch
    import torch.nn.functional as F

    dtype = torch.promote_types(tuned_logits.dtype, torch.float32)  # at least fp32 for the softmax
    return F.kl_div(F.log_softmax(tuned_logits.to(dtype), dim=-1), base_logprobs.to(dtype), log_target=True,
                    reduction="sum")


def base_logprobs(model, input_ids, attention_mask, keep):
    """The base model's log-probabilities at the ``keep`` positions (next-token targets, shifted) of
    ``input_ids``: the adapter switched off, no gradient. Returns (positions, vocabulary) in fp32."""
    import torch

    with torch.no_grad(), model.disable_adapter():
        hidden = model.get_base_model().get_decoder()(input_ids=input_ids, attention_mask=attention_mask)
        hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        head = model.get_output_embeddings()
        logits = head(hidden[:, :-1][keep].to(head.weight.dtype))
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
