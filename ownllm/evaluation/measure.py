"""Measuring a model on rows: loss per trained token, perplexity, and the rows to measure on.

One home for these figures, used by the report card, the quantizer and the export checks, so
"perplexity" means the same thing everywhere: exp of the mean loss over the tokens a row trains
(assistant answers of chat rows, every token of text rows), rendered as in training.
"""
from __future__ import annotations

import math
import os
from importlib import resources

MAX_LOSS = 50.0  # exp(50) is already meaningless as a perplexity; keeps a broken model's figure finite


def loss_on_rows(model, tokenizer, rows: list[dict], template=None, max_seq_len: int = 512) -> float:
    """Mean loss per trained token over ``rows`` (chat rows: the assistant answers; text rows: all tokens)."""
    total, count = 0.0, 0
    for row in rows:
        summed, n = _row_loss(model, tokenizer, row, template, max_seq_len)
        total, count = total + summed, count + n
    return total / max(count, 1)


def _row_loss(model, tokenizer, row: dict, template, max_seq_len: int) -> tuple[float, int]:
    """The loss summed over the tokens ``row`` trains (rendered as in training), and how many; (0, 0) for none."""
    import torch

    from ownllm.data.render import IGNORE, render_row

    r = render_row(row, tokenizer, template=template, max_seq_len=max_seq_len)
    if r.trained_tokens == 0:
        return 0.0, 0
    dev = next(iter(model.parameters()), torch.empty(0)).device
    ids, labels = torch.tensor([r.input_ids], device=dev), torch.tensor([r.labels], device=dev)
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=labels).loss
    n = int((labels[:, 1:] != IGNORE).sum())
    return float(loss) * n, n


def answer_logprob(model, tokenizer, row: dict, template=None, max_seq_len: int = 512) -> float:
    """The summed log-probability of the answers a chat row trains, given what comes before them (DPO's measure
    of how likely the model finds an answer; a pair's two sides share every earlier turn): minus the summed loss."""
    return -_row_loss(model, tokenizer, row, template, max_seq_len)[0]


def preference_scores(model, tokenizer, rows: list[dict], template=None, max_seq_len: int = 512) -> dict | None:
    """On held-out pairs (``data.preference``: a chosen answer and a rejected one), the share where the model
    finds the chosen answer more likely (``accuracy``) and the mean difference of their summed
    log-probabilities (``margin``, nats); None when ``rows`` hold no pair."""
    pairs = [r for r in rows if "rejected" in r]
    if not pairs:
        return None
    margins = []
    for r in pairs:
        rejected = {"messages": r["messages"][:-1] + [{"role": "assistant", "content": r["rejected"]}]}
        margins.append(answer_logprob(model, tokenizer, r, template, max_seq_len)
                       - answer_logprob(model, tokenizer, rejected, template, max_seq_len))
    return {"pairs": len(pairs), "accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
            "margin": round(sum(margins) / len(margins), 3)}


DECODE_TIMING_TOKENS = 32


def ms_per_token(model, tokenizer, prompt: str, new_tokens: int = DECODE_TIMING_TOKENS, repeats: int = 3) -> float:
    """Milliseconds per generated token for ``prompt`` (rendered) at exactly ``new_tokens`` greedy tokens,
    the median of ``repeats`` runs after a warm-up: two models compared at equal length, unlike a batch of
    answers whose lengths differ (a tuned model that answers longer reads as slower per token)."""
    import statistics
    import time

    import torch

    enc = {k: v.to(model.device) for k, v in tokenizer(prompt, return_tensors="pt", add_special_tokens=False).items()}
    fixed = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
                 min_new_tokens=new_tokens, max_new_tokens=new_tokens)
    times = []
    with torch.inference_mode():
        model.generate(**enc, **{**fixed, "min_new_tokens": 2, "max_new_tokens": 2})
        for _ in range(repeats):
            began = time.perf_counter()
            out = model.generate(**enc, **fixed)
            times.append((time.perf_counter() - began) / (out.shape[1] - enc["input_ids"].shape[1]))
    return round(1000 * statistics.median(times), 2)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOSS))


def perplexity_on_rows(model, tokenizer, rows: list[dict], template=None, max_seq_len: int = 512) -> float:
    return perplexity(loss_on_rows(model, tokenizer, rows, template, max_seq_len))


def general_rows() -> list[dict]:
    """The shipped general-text sample (text rows): what a fine-tune should not forget."""
    text = resources.files("ownllm.resources").joinpath("general_text.txt").read_text(encoding="utf-8")
    return [{"text": p.strip()} for p in text.split("\n\n") if p.strip()]


def sample_rows(run_or_model: str, limit: int = 50) -> list[dict]:
    """Rows to check a transformed model on (quantized, exported): the run's validation rows when it has
    some, else the general-text sample."""
    from ownllm.rundir import RunDir
    from ownllm.utils import read_jsonl

    val = RunDir(run_or_model).split("val") if run_or_model else ""
    rows = read_jsonl(val) if val and os.path.isfile(val) else []
    return rows[:limit] or general_rows()
