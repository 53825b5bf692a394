"""`ownllm eval`: base vs tuned on the held-out test split — the before/after report card.

Both answer every test prompt greedily (the same rendering as in training); we score answers,
measure loss/perplexity on the references, perplexity on a general-text sample (forgetting)
and latency. Every number in the report is computed here.
"""
from __future__ import annotations

import json
import os

from dataclasses import dataclass

from ownllm.config import setting
from ownllm.errors import ConfigError, DataError, OwnLLMError
from ownllm.evaluation import metrics as M
from ownllm.evaluation import probe
from ownllm.evaluation.measure import general_rows, loss_on_rows, ms_per_token, perplexity, preference_scores
from ownllm.models.generation import generate_greedy
from ownllm.models.load import base_of, load_model, merge_adapter
from ownllm.models.templates import render_chat
from ownllm.rundir import RunDir
from ownllm.utils import atomic_write, read_jsonl, write_jsonl



@dataclass
class EvalConfig:
    """The evaluate stage's settings: ``ownllm eval``'s flags and the studio's evaluation request."""
    data: str | None = setting(None, "evaluate on this file instead of the run's test split")
    no_base: bool = setting(False, "skip the base model")
    max_samples: int | None = setting(None, "evaluate at most N rows")
    max_new_tokens: int | None = setting(None, "answer length limit (default: from the references, <= 256)")

    def validate(self) -> "EvalConfig":
        p = [f"--{k.replace('_', '-')} must be an integer >= 1 (got {v!r})" for k, v in
             (("max_samples", self.max_samples), ("max_new_tokens", self.max_new_tokens))
             if v is not None and (not isinstance(v, int) or v < 1)]
        if self.data is not None and not os.path.exists(self.data):
            p.append(f"--data: not found: {self.data}")
        if p:
            raise ConfigError(p)
        return self


def _test_rows(run: RunDir, data: str | None, max_samples: int | None, path: str | None = None) -> list[dict]:
    """The rows to score: ``data`` (a file), else ``path``, else the run's data/test.jsonl."""
    if data:
        from ownllm.data.prepare import prepare_dataset

        rows = prepare_dataset([data], split="1,0,0", dedup="off").train
    else:
        path = path or run.split("test")
        if not os.path.exists(path):
            raise DataError(f"{run.path} has no test split (data/test.jsonl)", hint="pass --data FILE")
        rows = read_jsonl(path)
        regime = (run.data_report() or {}).get("regime") or {}
        if not rows and regime.get("name") == "tiny":
            raise DataError(f"{run.path} has no test rows: {regime['why']}",
                            hint="pass --data FILE with questions it never saw")
    chats = [r for r in rows if "messages" in r and r["messages"][-1]["role"] == "assistant"
             and r.get("label") is not False]  # an answer labelled bad is no reference to score against
    rows = chats or [r for r in rows if "text" in r]  # plain-text runs: loss and perplexity only
    if not rows:
        raise DataError("no rows to evaluate: chat rows must end in an assistant answer")
    return rows[:max_samples] if max_samples else rows


def _losses(model, tokenizer, rows, template, max_seq_len) -> dict:
    """Loss and perplexity on the test answers (data/test.jsonl, or --data), and perplexity on the
    general-text sample."""
    test_loss = loss_on_rows(model, tokenizer, rows, template, max_seq_len)
    general = loss_on_rows(model, tokenizer, general_rows(), None, max_seq_len)
    return {"test_loss": round(test_loss, 4), "perplexity": round(perplexity(test_loss), 3),
            "general_perplexity": round(perplexity(general), 3)}


def _answers(model, tokenizer, prompts, refs, max_new_tokens, timed: bool = True) -> tuple[dict, list]:
    """Greedy answers to the test prompts, their scores, and (``timed``) the decoding speed, a property of
    the model that is measured once per model, not per test set."""
    if not prompts:
        return {}, []
    stopped = []
    answers, seconds, new = generate_greedy(model, tokenizer, prompts, max_new_tokens, stopped=stopped)
    return {**M.aggregate(answers, refs), "seconds_per_answer": round(seconds / len(prompts), 3),
            **({"ms_per_token": ms_per_token(model, tokenizer, prompts[0])} if timed else {}),
            "stopped_within_budget": round(sum(stopped) / len(stopped), 4)}, answers


def _questions(tok, template, rows, max_new_tokens) -> tuple[list[str], list[str], int]:
    """The rendered prompts and reference answers of chat rows, and the answer length to allow."""
    chats = [r for r in rows if "messages" in r]
    prompts = [render_chat(tok, r["messages"][:-1], template, add_generation_prompt=True) for r in chats]
    refs = [r["messages"][-1]["content"] for r in chats]
    if not refs:
        max_new_tokens = 0
    elif max_new_tokens is None:  # room for answers a bit longer than the longest reference
        longest = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs)
        max_new_tokens = min(256, 2 * longest + 16)
    return prompts, refs, max_new_tokens


def _scored_set(loss: float, generator, tok, prompts, refs, max_new_tokens) -> dict:
    """A test set's loss (measured on the model as it is) and the scores of ``generator``'s greedy answers."""
    return {"test_loss": round(loss, 4), **_answers(generator, tok, prompts, refs, max_new_tokens, timed=False)[0]}


def evaluate(run_dir, data: str | None = None, no_base: bool = False, max_samples: int | None = None,
             max_new_tokens: int | None = None) -> dict:
    """The evaluate stage: score the base and the tuned model of the run directory ``run_dir`` (a path or a
    ``RunDir``) on its test split; write its ``eval/`` (metrics.json, report.md/html, samples.jsonl) and
    return the metrics (``headline`` says them in a line)."""
    from ownllm.models.templates import chat_template_for

    run = RunDir(run_dir)
    if not os.path.isdir(run.path):
        raise OwnLLMError(f"run directory not found: {run.path}")
    if run.is_run() and run.trained_output() is None:
        raise OwnLLMError(f"{run.path} has no trained model yet (no adapter/ or model/ in it)",
                          hint=f"train it first: ownllm train {run.path}")
    cfg = run.config()
    rows = _test_rows(run, data, max_samples)
    # a continual run's earlier stages keep their own test splits: scored beside this one (not with --data)
    earlier = [] if data else [(name, _test_rows(run, None, max_samples, path)) for name, path in run.earlier_tests()]
    tuned = load_model(run.path, merge=False)  # the base model's answers need the adapter switched off
    tok = tuned.tokenizer
    template = chat_template_for(tok, cfg.get("template"))
    asked = [(name, r, *_questions(tok, template, r, max_new_tokens)) for name, r in earlier]
    prompts, refs, max_new_tokens = _questions(tok, template, rows, max_new_tokens)
    seq = int(cfg.get("max_seq_len") or 1024)
    result, answers, base_probe = {}, {}, None
    sets = [{"name": name, "samples": len(r)} for name, r, *_ in asked]
    if not no_base:
        base_model, base_ctx = base_of(tuned, cfg.get("model"))
        with base_ctx:
            result["base"] = _losses(base_model, tok, rows, template, seq)
            result["base"]["preference"] = preference_scores(base_model, tok, rows, template, seq)
            scores, answers["base"] = _answers(base_model, tok, prompts, refs, max_new_tokens)
            result["base"].update(scores)
            base_probe = probe.base_answers(base_model, tok, template, cfg.get("model"))
            for out, (_, r, p, ref, n) in zip(sets, asked):
                out["base"] = _scored_set(loss_on_rows(base_model, tok, r, template, seq), base_model, tok, p, ref, n)
    result["tuned"] = _losses(tuned.model, tok, rows, template, seq)  # the trained model as it is
    result["tuned"]["preference"] = preference_scores(tuned.model, tok, rows, template, seq)
    losses = [loss_on_rows(tuned.model, tok, r, template, seq) for _, r, *_ in asked]
    # answers from the adapter folded into the weights (checked), as `chat`/`serve` generate them;
    # the base side above needed the adapter switched off, so the merge comes only now
    generator, note = merge_adapter(tuned.model, tok)
    scores, answers["tuned"] = _answers(generator, tok, prompts, refs, max_new_tokens)
    result["tuned"].update(scores, merged_for_generation=note is None)
    for out, loss, (_, r, p, ref, n) in zip(sets, losses, asked):
        out["tuned"] = _scored_set(loss, generator, tok, p, ref, n)
    if sets:
        result["earlier_tests"] = sets
    result["samples"] = len(rows)
    result["max_new_tokens"] = max_new_tokens
    result.update(_general_check(generator, tok, template, cfg, result, base_probe, run.summary()))
    from ownllm.evaluation.report import settings_chosen

    result["settings_chosen"] = settings_chosen(run)
    from ownllm.evaluation.report import write_report

    samples = _samples(rows, refs, answers)
    result.update(_answer_overlap(run if not data else None, samples))
    os.makedirs(run.eval_dir, exist_ok=True)
    write_jsonl(run.eval_file("samples.jsonl"), samples)
    result["headline"] = headline(result)
    atomic_write(run.eval_file("metrics.json"), json.dumps(result, ensure_ascii=False, indent=2))
    write_report(run, result, samples)
    return result


def _general_check(model, tok, template, cfg: dict, result: dict, base_probe, summary: dict | None) -> dict:
    """What the fine-tune kept of the base model: its right answers to the general probe, and perplexity
    on general text. Without the base model (--no-base) the probe uses the base answers cached by an
    earlier evaluation, or is skipped and says so. ``summary``: the run's train_summary.json (for a base
    model's run, a note says what the probe can and cannot show)."""
    out = {}
    base_probe = base_probe or probe.cached_base_answers(cfg.get("model"), template)
    if base_probe is not None:
        out["general_answers"] = probe.compare_to_base(model, tok, template, base_probe)
    else:
        out["general_answers"] = None
        out["general_check_skipped"] = "--no-base and no cached base answers: general answers kept not measured"
    if "base" in result and result["base"]["general_perplexity"]:
        change = result["tuned"]["general_perplexity"] / result["base"]["general_perplexity"] - 1
        out["general_perplexity_change"] = round(change, 4)
    template_how = ((summary or {}).get("template") or {}).get("how", "")
    if template_how.startswith("chosen"):  # a base model: it was never taught to chat
        out["base_model_note"] = (
            "The base model has no chat template: the general questions are asked in the one ownllm chose for it "
            "(see train_summary.json), which it was never taught, so it answers few of them and 'kept' counts "
            "those few. General perplexity on plain text compares like with like: it is the measure to read here.")
    ppl_warn = out.get("general_perplexity_change", 0) > probe.PERPLEXITY_WARN
    kept_warn = bool((out["general_answers"] or {}).get("warning"))
    out["forgetting_warning"] = ppl_warn or kept_warn
    return out


def _answer_overlap(run: RunDir | None, samples: list[dict]) -> dict:
    """How many test references are, word for word, the answer of a training row: then the test measures
    recall of trained answers for new phrasings, not answers the model never saw. Marks each sample and,
    when both kinds exist, scores them apart."""
    path = run.split("train") if run else None
    if not samples or not path or not os.path.exists(path):
        return {}
    trained = {M.normalize(m["content"]) for r in read_jsonl(path) for m in r.get("messages", [])
               if m.get("role") == "assistant"}
    for s in samples:
        s["seen_in_training"] = M.normalize(s["reference"]) in trained
    seen = [s for s in samples if s["seen_in_training"]]
    out = {"answers_seen_in_training": {"seen": len(seen), "questions": len(samples)}}
    if 0 < len(seen) < len(samples):
        unseen = [s for s in samples if not s["seen_in_training"]]
        out["by_overlap"] = {name: {side: round(sum(s[f"{side}_scores"]["contains"] for s in group) / len(group), 4)
                                    for side in ("base", "tuned") if f"{side}_scores" in group[0]}
                             for name, group in (("seen", seen), ("unseen", unseen))}
    return out


def _samples(rows, refs, answers) -> list[dict]:
    if not refs:
        return []
    out = []
    for i, (row, ref) in enumerate(zip(rows, refs)):
        s = {"prompt": next((m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user"), ""),
             "reference": ref, "tuned": answers["tuned"][i], "tuned_scores": M.score(answers["tuned"][i], ref)}
        if "base" in answers:
            s["base"] = answers["base"][i]
            s["base_scores"] = M.score(answers["base"][i], ref)
        out.append(s)
    return out


def headline(result: dict) -> str:
    n, t = result["samples"], result["tuned"]
    if "contains" not in t:  # plain-text data: no answers to score
        b = result.get("base")
        return (f"perplexity {b['perplexity']:.2f} → {t['perplexity']:.2f}" if b else f"perplexity {t['perplexity']:.2f}") \
            + f" on {n} held-out text chunks"
    key, name = _headline_metric(t)
    if "base" not in result:
        return (f"{name} {t[key]:.0%}, token F1 {t['token_f1']:.2f} on {n} held-out questions"
                + _preference_text(result) + _kept_text(result) + _overlap_text(result))
    b = result["base"]
    text = (f"{name} {b[key]:.0%} → {t[key]:.0%}, token F1 {b['token_f1']:.2f} → "
            f"{t['token_f1']:.2f}, loss {b['test_loss']:.2f} → {t['test_loss']:.2f} on {n} held-out questions")
    if b["general_perplexity"]:
        text += f"; general perplexity {t['general_perplexity'] / b['general_perplexity'] - 1:+.0%}"
    return text + _preference_text(result) + _kept_text(result) + _overlap_text(result) + _earlier_text(result)


def _preference_text(result: dict) -> str:
    """Held-out pairs: how often the model finds the chosen answer the likelier, base → tuned, and the margin."""
    t = result["tuned"].get("preference")
    if not t:
        return ""
    b = (result.get("base") or {}).get("preference")
    before = f"{b['accuracy']:.0%} → " if b else ""
    margin = f"{b['margin']:+.1f} → {t['margin']:+.1f}" if b else f"{t['margin']:+.1f}"
    return (f"; preference accuracy {before}{t['accuracy']:.0%} on {t['pairs']} held-out pairs (the chosen answer the "
            f"likelier; mean log-probability margin {margin} nats)")


def _headline_metric(scores: dict) -> tuple[str, str]:
    """The headline metric follows the task: the choice picked for A-D questions, else the reference found."""
    return ("choice_accuracy", "choice accuracy") if "choice_accuracy" in scores else ("contains", "contains-accuracy")


def _earlier_text(result: dict) -> str:
    """A continual run: how the earlier stages' test sets fare (the headline metric, base → tuned)."""
    parts = []
    for s in result.get("earlier_tests", []):
        key = _headline_metric(s["tuned"])[0]
        if key not in s["tuned"]:
            continue
        before = f"{s['base'][key]:.0%} → " if "base" in s else ""
        parts.append(f"{s['name']}'s {s['samples']} test questions {before}{s['tuned'][key]:.0%}")
    return f"; earlier test sets: {', '.join(parts)}" if parts else ""


def _overlap_text(result: dict) -> str:
    o = result.get("answers_seen_in_training")
    if not o or not o["seen"]:
        return ""
    text = (f"; {o['seen']} of {o['questions']} reference answers appear word for word in training (for those, this "
            "measures recall of trained answers for new phrasings)")
    by = result.get("by_overlap")
    if by:
        text += (f"; contains on answers seen / unseen in training: {by['seen']['tuned']:.0%} / "
                 f"{by['unseen']['tuned']:.0%}")
    return text


def _kept_text(result: dict) -> str:
    g = result.get("general_answers")
    if not g:
        return "; general answers kept: not measured" if "general_check_skipped" in result else ""
    if not g["base_right"]:
        where = "the probe's report half" if g.get("half") == "report" else f"{g['questions']} probe questions"
        return f"; general answers kept: n/a (the base model answered none of {where})"
    half = " on the probe's report half" if g.get("half") == "report" else ""
    return f"; general answers kept {g['kept']}/{g['base_right']} ({g['kept_share']:.0%}){half}"


def compare_runs(run_a: str, run_b: str) -> str:
    """Two evaluated runs side by side (e.g. LoRA vs QLoRA): tuned metrics and training figures."""
    from ownllm.evaluation.report import ROWS, _fmt

    def load(path):
        run = RunDir(path)
        result = run.eval_metrics()
        if not result or "tuned" not in result:
            raise OwnLLMError(f"{path} has not been evaluated yet (no eval/metrics.json)",
                              hint=f"run: ownllm eval {path}")
        metrics = result["tuned"]
        s = run.summary()
        if s is not None:
            metrics.update({f"train_{k}": s.get(k) for k in ("method", "tokens_per_second", "peak_memory_mb",
                                                             "wall_seconds", "best_val_loss", "trainable_params")})
        return metrics

    a, b = load(run_a), load(run_b)
    keys = [k for k in ROWS if k in a or k in b] + sorted(k for k in set(a) | set(b) if k.startswith("train_"))
    rows = [("metric", run_a, run_b)] + [(k, _fmt(a.get(k, "")), _fmt(b.get(k, ""))) for k in keys]
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
