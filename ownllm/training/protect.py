"""Forgetting protection: keep the base model's general ability while an adapter learns the domain.

Replay rows are general prompts (``resources/replay_prompts.jsonl``: each with the fact it asks, if any,
and none of those facts one that the general probe asks, in any language: tests/test_forgetting.py)
followed by the base model's own greedy answer, generated once per base model and cached. They
are drawn more in the domain's language than the pool's (a Chinese domain moves the model most on Chinese
text) and mixed into the training rows, never into validation: validation scores the domain's rows, and
early stopping and the best checkpoint follow their loss plus the KL weight times the drift on a few
replayed rows (``general_drift``). On replay rows the loss is not cross-entropy but the KL
divergence from the base model's next-token distribution to the tuned model's at every answer
position: the adapter is pulled back to what the base model would have said. The base model's
distributions on the replay rows are fixed, so they are computed once before training (the adapter
switched off: no second copy in memory) and kept as each position's ``BASE_TOP_K`` most likely tokens
plus the mass of all the others, instead of a forward pass of the base model per replayed row per step.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
from dataclasses import dataclass
from importlib import resources

from ownllm.utils import is_cjk

# Keeps replay rows short: the general prompt and the start of the base model's answer, where a fine-tune's damage
# shows (short factual answers end sooner). Support sample (benchmarks/RESULTS.md): 24 tokens kept 69 and 71 of
# 76 general answers in two runs with 0.81x the replayed tokens of 40 (68-69 of 76 in four); 16 kept 66.
REPLAY_NEW_TOKENS = 24
# What the planner assumes a replay row costs before the run has made them: on the embedded model, with
# its chat template's default system prompt, the prompt and up to 24 answer tokens, they average 63.
REPLAY_TOKENS_PER_ROW = 63


@dataclass(frozen=True)
class Protection:
    replay_ratio: float   # replay rows per training row
    kl_weight: float      # weight of a replay token's KL against a domain token's cross-entropy
    min_rows: int = 16    # at least this many replay rows on small datasets


# Chosen by benchmarks/forgetting.py (RESULTS.md): KL weight 2 kept as many general answers as 1 on the
# support sample and more on the clinic one (91% vs 90%), with better domain accuracy there (58% vs 42%)
# and half the general-perplexity rise, at the same cost; more replayed rows cost time in proportion.
# Measured again with the distributions computed once (2026-12-03): KL 4 kept 91% on clinic (2: 88%) with
# +19% general perplexity (2: +37%), but answered 2 fewer of support's 18 test questions (78% vs 89%).
# With 24-token replay (2026-12-04): KL 3 kept 63 of support's 76 general answers (66 with
# more Chinese replay; weight 2: 69 and 71).
LEVELS = {"off": None, "default": Protection(replay_ratio=0.35, kl_weight=2.0),
          "strong": Protection(replay_ratio=0.75, kl_weight=3.0)}
METHODS = ("lora", "dora", "qlora")  # the base is the same network with the adapter switched off
# Fewer training rows than this: the default level protects as strongly as "strong". Many epochs over a few rows
# move the model further, and the replayed rows cost little in seconds. 40-row fictional domain (RESULTS.md, "Small
# datasets"): strong's settings kept 30 of the probe's 38 dev-half answers against 27 (report half 33 vs 32, and
# 34 vs 31 in an earlier pair), every held-out fact still learned, in 1.21x the time.
SMALL_DATA_ROWS = 100


def _level(name: str, n_train: int | None) -> Protection | None:
    if name == "default" and n_train is not None and n_train < SMALL_DATA_ROWS:
        return LEVELS["strong"]
    return LEVELS[name]


def protection_for(cfg, n_train: int | None = None) -> Protection | None:
    """The protection this run gets on ``n_train`` training rows: None for --protect off and for methods without
    a switchable adapter; the default level's settings, or strong's on fewer than ``SMALL_DATA_ROWS`` rows."""
    level = _level(cfg.protect, n_train)
    return level if level is not None and cfg.method in METHODS else None


def replay_items() -> list[dict]:
    """The replay pool: ``{prompt, lang, fact}`` (``fact``: the fact a factual prompt asks, in the probe's
    vocabulary; None for an open prompt)."""
    text = resources.files("ownllm.resources").joinpath("replay_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def replay_prompts() -> list[str]:
    return [item["prompt"] for item in replay_items()]


def replay_count(n_train: int, protection: Protection) -> int:
    return min(len(replay_prompts()), max(protection.min_rows, math.ceil(protection.replay_ratio * n_train)))


def replay_for_plan(level: str, method: str, n_train: int) -> int:
    """How many replay rows ``ownllm train --protect LEVEL`` adds to ``n_train`` rows (for the planner); a
    preference stage (which tunes a LoRA adapter) replays about as many per epoch."""
    from ownllm.training.config import PREFERENCE_METHODS

    protection = _level(level, n_train)
    adapter = method in METHODS or method in PREFERENCE_METHODS
    return replay_count(n_train, protection) if protection is not None and adapter else 0


def _cache_path(model_name: str, template: str | None) -> str:
    from ownllm.models.load import cache_dir, fingerprint

    key = fingerprint(model_name, template or "", "\n".join(replay_prompts()), str(REPLAY_NEW_TOKENS))
    return cache_dir("replay", f"{key}.jsonl")


def base_answers(model, tokenizer, cfg, plain_text: bool = False) -> list[dict]:
    """The base model's greedy answer to every replay prompt, as chat rows; cached per base model.
    ``plain_text`` (a base model, which never learned to chat): its continuation of each prompt as plain
    text, as ``{"text": ...}`` rows — what such a model knows is text, and the replay keeps that.

    ``model`` is the model being trained (its adapter is switched off while it answers)."""
    from ownllm.models.templates import chat_template_for, render_chat
    from ownllm.models.generation import generate_greedy
    from ownllm.utils import read_jsonl, write_jsonl

    template = None if plain_text else chat_template_for(tokenizer, cfg.template)
    path = _cache_path(cfg.model, template or "plain text")
    if os.path.exists(path):
        return read_jsonl(path)
    prompts = replay_prompts()
    rendered = [(tokenizer.bos_token or "") + p if plain_text else
                render_chat(tokenizer, [{"role": "user", "content": p}], template, add_generation_prompt=True)
                for p in prompts]
    with _evaluating(model), model.disable_adapter():
        answers, _, _ = generate_greedy(model, tokenizer, rendered, REPLAY_NEW_TOKENS, batch=16, strip=False)
    if plain_text:
        rows = [{"text": p + a} for p, a in zip(prompts, answers) if a.strip()]
    else:
        rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a.strip() or a}]}
                for p, a in zip(prompts, answers) if a]
    write_jsonl(path, rows)
    return rows


def _prompt(row: dict) -> str:
    return row["messages"][0]["content"] if "messages" in row else row["text"]


def replay_rows(model, tokenizer, cfg, domain_rows: list[dict], protection: Protection,
                plain_text: bool = False) -> list[dict]:
    """``replay_count`` replay rows for ``domain_rows`` (the person's training rows), drawn with the run's seed,
    in the domain's languages more than the pool's (``language_mix``); ``plain_text``: see ``base_answers``."""
    rows = base_answers(model, tokenizer, cfg, plain_text)
    rng, n = random.Random(cfg.seed), min(len(rows), replay_count(len(domain_rows), protection))
    chinese, other = [], []
    for r in rows:
        (chinese if is_cjk(_prompt(r)) else other).append(r)
    want = round(n * language_mix(cjk_share(domain_rows), len(chinese) / max(1, len(rows))))
    take = min(len(chinese), max(want, n - len(other)))
    return interleave(rng.sample(chinese, take), rng.sample(other, n - take))


def interleave(a: list, b: list) -> list:
    """``a`` and ``b`` merged so that every prefix holds them in their overall proportion (to the nearest
    row): the drift rows that steer early stopping are the replay's first ``DRIFT_ROWS``, so they must be
    in the replay's language mix (Chinese first made 6 of the English support sample's 8 Chinese)."""
    out, i, j, n = [], 0, 0, len(a) + len(b)
    for k in range(1, n + 1):
        if i < len(a) and (j == len(b) or i < (2 * len(a) * k + n) // (2 * n)):  # a's share of k, rounded
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def language_mix(domain_share: float, pool_share: float) -> float:
    """The share of Chinese replay rows: half the domain's share of Chinese rows, half the pool's, at most
    half. Fine-tuning moves the model most on text like the domain's, so that is where more of the replay
    goes; the pool's half keeps every language some protection. The cap keeps half the replay in the other
    languages when the domain is Chinese: the clinic sample with 61% Chinese replay lost short English answers
    ("What is 6 times 7?") and kept 67 of 76; with half, 69 (benchmarks/RESULTS.md)."""
    return min(0.5, (domain_share + pool_share) / 2)


def cjk_share(rows: list[dict]) -> float:
    """The share of ``rows`` (chat or text rows) whose trained text is Chinese (or another CJK language)."""
    def trained(r):
        return " ".join(m.get("content") or "" for m in r["messages"] if m.get("role") == "assistant") \
            if "messages" in r else r.get("text") or ""
    return sum(is_cjk(trained(r)) for r in rows) / len(rows) if rows else 0.0


# The base model's distribution at a replay position is kept as its 256 most likely tokens and one bucket for
# the rest of the vocabulary: KL between those coarse distributions is zero when the models agree; on the
# embedded model's 141 replay answers the bucket holds 1.2% of the probability on average (64 tokens: 4.2%,
# 512: 0.7%). 191 rows of ~23 answer tokens are ~14 MB.
BASE_TOP_K = 256


def kl_sum(tuned_logits, top_ids, top_logprobs):
    """Sum over positions of KL(base || tuned) between next-token distributions coarsened to the base
    model's top tokens plus one bucket for the others. ``tuned_logits``: (positions, vocabulary);
    ``top_ids``: (positions, k) token ids; ``top_logprobs``: (positions, k + 1), the base model's
    log-probabilities of those tokens and, last, of all the others together. Zero when the two models
    agree; its gradient with respect to a tuned logit is q - p for a top token and q (1 - p_rest / q_rest)
    for any other, q and p being the tuned and base probabilities."""
    return _coarse_kl().apply(tuned_logits, top_ids, top_logprobs)


@functools.cache
def _coarse_kl():
    import torch

    # Written out rather than left to autograd: through logsumexp, scatter and gather autograd makes about a
    # dozen passes over the (positions x vocabulary) logits, 10% of a protected training step on the embedded
    # model; the closed-form gradient needs one.
    class CoarseKL(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, ids, base_lp):
            x = logits.to(torch.promote_types(logits.dtype, torch.float32))
            top = x.max(-1, keepdim=True).values
            e = (x - top).exp_()
            s_all = e.sum(-1, keepdim=True)
            # the others' mass summed apart, not as all minus the top: that difference cancels when it is small
            s_rest = e.scatter(-1, ids, 0.0).sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
            tuned = torch.cat([x.gather(-1, ids) - top, s_rest.log()], -1) - s_all.log()
            base_lp = base_lp.to(tuned.dtype)
            p = base_lp.exp()
            ctx.save_for_backward(e, s_all, s_rest, ids, p, tuned)
            ctx.logits_dtype = logits.dtype
            return (p * (base_lp - tuned)).sum()

        @staticmethod
        def backward(ctx, grad):
            e, s_all, s_rest, ids, p, tuned = ctx.saved_tensors
            # others: q (1 - p_rest / q_rest) = e (1 / s_all - p_rest / s_rest); top tokens: q - p
            out = e * (grad * (1 / s_all - p[:, -1:] / s_rest))
            out.scatter_(-1, ids, grad * (tuned[:, :-1].exp() - p[:, :-1]))
            return out.to(ctx.logits_dtype), None, None

    return CoarseKL


def coarse_logprobs(logits, ids):
    """Log-probabilities (positions, k + 1) of the tokens ``ids`` (positions, k) under ``logits`` (positions,
    vocabulary) and, last, of all the other tokens together; in at least fp32."""
    import torch

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    total = torch.logsumexp(logits, dim=-1, keepdim=True)
    rest = torch.logsumexp(logits.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([logits.gather(-1, ids), rest], dim=-1) - total


def top_k_logprobs(logits, k: int = BASE_TOP_K):
    """(ids, log-probabilities) of the ``k`` most likely tokens at each row of ``logits`` (positions,
    vocabulary), the log-probabilities followed by the log of the remaining mass, as ``kl_sum`` takes them.
    Never all of the vocabulary: the remaining bucket keeps at least one token."""
    k = min(k, logits.shape[-1] - 1)
    ids = logits.topk(k, dim=-1).indices
    return ids, coarse_logprobs(logits, ids)


# Validation also scores this many replayed rows for drift from the base model (a few seconds per evaluation on
# a CPU): the best checkpoint by the domain's loss alone is an early one, before the KL term has pulled the
# general answers back (support sample: best at step 100 of 250, 61 of 76 general answers kept). 8 rather than 16:
# each validation took 2.2 s for 16 rows against 1.4 s for the domain's own 18 (benchmarks/RESULTS.md).
DRIFT_ROWS = 8


def base_distributions(model, rows, pad_id: int, batch: int = 8, k: int = BASE_TOP_K) -> list[tuple]:
    """The base model's next-token distributions at the trained positions of each tokenized row
    (``input_ids`` and ``labels`` lists), as ``top_k_logprobs`` gives them: one (ids, log-probs) pair per
    row, positions in order. Computed once, before training, with the adapter switched off."""
    with _evaluating(model), model.disable_adapter():
        return [tuple(t.cpu() for t in top_k_logprobs(logits, k)) for logits in _answer_logits(model, rows, pad_id,
                                                                                               batch)]


def general_drift(model, rows, targets: list[tuple], pad_id: int, batch: int = 8) -> float:
    """Mean KL(base || tuned) per answer token of the tokenized replay ``rows`` against the base model's
    distributions on them (``targets``, from ``base_distributions``): how far the adapter has moved the model
    on general prompts. Zero for the base model itself."""
    with _evaluating(model):
        return float(replay_kl(model, rows, targets, pad_id, batch))


def replay_kl(model, rows, targets: list[tuple], pad_id: int, batch: int = 8):
    """Mean KL(base || tuned) per answer token of the tokenized replay ``rows`` (a tensor; with gradients when
    called in training): ``general_drift``'s measure, and a preference stage's protection term, which, unlike
    a supervised run's, cannot ride in the training batch (TRL's trainers batch pairs, not rows)."""
    total, positions = 0.0, 0
    for logits, (ids, logprobs) in zip(_answer_logits(model, rows, pad_id, batch), targets):
        total = total + kl_sum(logits, ids.to(logits.device), logprobs.to(logits.device))
        positions += ids.shape[0]
    return total / max(1, positions)


@contextlib.contextmanager
def _evaluating(model):
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _answer_logits(model, rows, pad_id: int, batch: int):
    """Each tokenized row's logits at its trained positions, in order: the decoder's final hidden states
    through the output layer at those positions only."""
    from ownllm.data.render import IGNORE
    from ownllm.training.data import pad_collator

    collate, device = pad_collator(pad_id), next(model.parameters()).device
    decoder, head = model.get_base_model().get_decoder(), model.get_output_embeddings()
    for i in range(0, len(rows), batch):
        chunk = collate([{"input_ids": rows[j]["input_ids"], "labels": rows[j]["labels"]}
                         for j in range(i, min(i + batch, len(rows)))])
        ids, mask = chunk["input_ids"].to(device), chunk["attention_mask"].to(device)
        hidden = decoder(input_ids=ids, attention_mask=mask)
        hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        keep = chunk["labels"][:, 1:].to(device) != IGNORE
        for row in range(ids.shape[0]):
            yield head(hidden[row, :-1][keep[row]].to(head.weight.dtype))
