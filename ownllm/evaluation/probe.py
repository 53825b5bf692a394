"""The general-ability probe: short questions with whole-word answers (English and Chinese) and a
few format-following prompts judged by rule, shipped in ``resources/general_probe.jsonl``.

The report card asks the base and the tuned model every question and counts, of the answers the
base model got right, how many the tuned one still gets right: what a fine-tune must keep.

Every item names the fact it asks (``fact``: the English and Chinese questions of one fact share it)
and its ``half``: ``dev``, the questions that recipes (protection's settings, the replay pool) are
chosen on, or ``report``, the questions the report card's headline and the README quote. A fact's
questions are all in one half, and no replayed prompt asks a probe fact (tests/test_forgetting.py).
"""
from __future__ import annotations

import json
import os
import re
from importlib import resources

from ownllm.models.generation import generate_greedy
from ownllm.evaluation.metrics import contains, normalize
from ownllm.utils import is_cjk

KEPT_WARN = 0.90        # warn when the tuned model keeps fewer of the base model's right answers
PERPLEXITY_WARN = 0.10  # warn when general-text perplexity rises by more
PROBE_NEW_TOKENS = 32   # enough for a short sentence holding the answer


def probe_items() -> list[dict]:
    text = resources.files("ownllm.resources").joinpath("general_probe.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _has_word(answer: str, word: str) -> bool:
    return bool(contains(answer, word))  # the report card's one rule: whole words, CJK spans, numbers as numbers


def judge(item: dict, answer: str) -> bool:
    """Whether ``answer`` is right for the probe ``item`` (its accepted answers, or its format rule)."""
    answers = item.get("answers") or []
    if item["kind"] == "fact":
        return any(_has_word(answer, a) for a in answers)
    rule, words = item["rule"], normalize(answer).split()
    if rule == "one_word":
        return (len(words) == 1 or (is_cjk(answer) and len(normalize(answer)) <= 4)) and \
            any(_has_word(answer, a) for a in answers)
    if rule == "number_only":
        return len(words) == 1 and words[0] in answers
    if rule == "list3":
        parts = [p for p in re.split(r"[,，、\n]|\band\b", answer.strip().rstrip(".。")) if p.strip(" -*•0123456789.")]
        return len(parts) == 3
    if rule == "uppercase":
        return any(a in answer for a in answers)  # case-sensitive on purpose
    if rule == "yes_no":
        return bool(words) and words[0] == answers[0]
    raise ValueError(f"unknown probe rule {rule!r}")


def render_questions(items: list[dict], tokenizer, template) -> list[str]:
    from ownllm.models.templates import render_chat

    return [render_chat(tokenizer, [{"role": "user", "content": i["question"]}], template, add_generation_prompt=True)
            for i in items]


def ask(model, tokenizer, template, items: list[dict] | None = None) -> list[dict]:
    """Every probe question, answered greedily: ``[{id, question, answer, right}]``."""
    items = items or probe_items()
    answers, _, _ = generate_greedy(model, tokenizer, render_questions(items, tokenizer, template), PROBE_NEW_TOKENS)
    return [{"id": i["id"], "lang": i["lang"], "question": i["question"], "answer": a, "right": judge(i, a)}
            for i, a in zip(items, answers)]


def base_answers(model, tokenizer, template, base_name: str | None) -> list[dict]:
    """The base model's probe answers, cached per base model (greedy, so they never change)."""
    from ownllm.utils import read_jsonl, write_jsonl

    path = _cache_path(base_name, template)
    if path and os.path.exists(path):
        return read_jsonl(path)
    answers = ask(model, tokenizer, template)
    if path:
        write_jsonl(path, answers)
    return answers


def cached_base_answers(base_name: str | None, template) -> list[dict] | None:
    from ownllm.utils import read_jsonl

    path = _cache_path(base_name, template)
    return read_jsonl(path) if path and os.path.exists(path) else None


def _cache_path(base_name: str | None, template) -> str | None:
    from ownllm.errors import OwnLLMError
    from ownllm.models.load import cache_dir, fingerprint

    if not base_name:
        return None
    raw = resources.files("ownllm.resources").joinpath("general_probe.jsonl").read_text(encoding="utf-8")
    try:
        key = fingerprint(base_name, template or "", raw, str(PROBE_NEW_TOKENS))
    except OwnLLMError:  # the base model is not here any more: no cache, the caller measures afresh or skips
        return None
    return cache_dir("probe", f"{key}.jsonl")


def compare_to_base(model, tokenizer, template, base: list[dict], examples: int = 5) -> dict:
    """Ask ``model`` the questions the base model answered right; how many it still gets right, with
    examples of lost answers. The headline figures (``kept``, ``base_right``, ``kept_share``, by language)
    are the report half's; ``halves`` has both halves and ``all`` every question. Warns when fewer than
    ``KEPT_WARN`` of all the questions the base model got right are kept (the most evidence)."""
    items = {i["id"]: i for i in probe_items()}
    right = [b for b in base if b["right"] and b["id"] in items]
    tuned = ask(model, tokenizer, template, [items[b["id"]] for b in right]) if right else []
    pairs = [(b, t, items[b["id"]].get("half", "report")) for b, t in zip(right, tuned)]

    def counts(of: list) -> dict:
        kept = sum(t["right"] for _, t, _ in of)
        return {"base_right": len(of), "kept": kept, "kept_share": round(kept / len(of), 4) if of else None,
                "base_right_by_lang": _by_lang([b for b, _, _ in of]),
                "kept_by_lang": _by_lang([t for _, t, _ in of if t["right"]])}

    every = counts(pairs)
    report = counts([p for p in pairs if p[2] == "report"])
    lost = [{"question": b["question"], "base": b["answer"], "tuned": t["answer"], "half": h}
            for b, t, h in pairs if not t["right"]]
    return {"questions": sum(1 for b in base if b["id"] in items), "half": "report", **report,
            "halves": {"dev": counts([p for p in pairs if p[2] == "dev"]), "report": report}, "all": every,
            "lost_examples": lost[:examples],
            "warning": every["kept_share"] is not None and every["kept_share"] < KEPT_WARN}


def _by_lang(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out[r["lang"]] = out.get(r["lang"], 0) + 1
    return out
