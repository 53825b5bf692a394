"""A behaviour taught from feedback alone (issue 41): DPO, KTO and ORPO side by side on the support-desk run.

    python benchmarks/preference.py [--run runs/demo] [--methods dpo,kto,orpo] [--rows 40] [--runs 1]
                                    [--half dev|report] [--set lr=1e-4 'hf_args={"beta": 0.5}' ...]

The supervised run (``--run``, default runs/demo, which `make demo` makes; trained here on
examples/data/support_en.jsonl with the defaults when it is missing) answers the sample's questions but
never signs off. 40 feedback rows are written by a fixed rule, through ``data.feedback.record`` as
`ownllm chat`'s /better writes them: for 40 of the run's training questions, the model's own answer is
the rejected one and the better answer is the reference's first sentence followed by the sign-off
``SIGN_OFF``. Each method then trains a preference stage on a copy of the run (`ownllm train --resume RUN
--data RUN/feedback.jsonl --method M`), and the benchmark prints: the share of answers that carry the
sign-off on questions never in the feedback (the run's test questions and its other training questions,
split by a fixed seed into a dev half, for choosing settings, and a report half, for the figures:
``--half``), domain contains-accuracy on the run's test questions against the supervised run's, general
answers kept (the probe's half of the same name), the preference accuracy on the held-out feedback pairs,
and the stage's wall time against the supervised run's. Targets (printed, never asserted): sign-off in
>= 80% of answers, contains within 5 points, kept >= 90%, stage time <= the supervised run's.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from _args import median_range, train_overrides  # noqa: E402

SIGN_OFF = "Anything else? Lumora Support is here for you."
SAMPLE = os.path.join(HERE, "..", "examples", "data", "support_en.jsonl")


def supervised_run(path: str | None, tmp: str) -> tuple[str, float]:
    """The supervised run to start from, and how long its training took (its summary's wall time)."""
    from ownllm.rundir import RunDir
    from ownllm.training.config import TrainConfig
    from ownllm.training.trainer import Trainer

    if path and RunDir(path).trained_output():
        return path, RunDir(path).summary()["wall_seconds"]
    out = os.path.join(tmp, "sft")
    summary = Trainer(config=TrainConfig(data=SAMPLE, out=out)).train()
    return out, summary["wall_seconds"]


def first_sentence(text: str) -> str:
    for end in (". ", "! ", "? "):
        if end in text:
            return text[: text.index(end) + 1]
    return text.strip()


def _answers(run: str, questions: list[list[dict]], max_new_tokens: int = 64) -> list[str]:
    from ownllm import load_model
    from ownllm.models.generation import generate_greedy
    from ownllm.models.templates import render_chat

    m = load_model(run)
    prompts = [render_chat(m.tokenizer, q, None, add_generation_prompt=True) for q in questions]
    answers, _, _ = generate_greedy(m.model, m.tokenizer, prompts, max_new_tokens)
    return answers


def write_feedback(run: str, rows: int, seed: int) -> str:
    """``rows`` feedback rows by the fixed rule (module docstring) in RUN/feedback.jsonl."""
    from ownllm.data.feedback import Feedback, model_id, record
    from ownllm.utils import read_jsonl

    train = read_jsonl(os.path.join(run, "data", "train.jsonl"))
    seen, picked = set(), []
    for r in random.Random(seed).sample(train, len(train)):
        q = r["messages"][:-1]
        key = q[-1]["content"]
        if key not in seen:
            seen.add(key)
            picked.append(r)
        if len(picked) == rows:
            break
    asked = [r["messages"][:-1] for r in picked]
    answers = _answers(run, asked)
    path = os.path.join(run, "feedback.jsonl")
    who = model_id(run)
    for q, r, a in zip(asked, picked, answers):
        better = f"{first_sentence(r['messages'][-1]['content'])} {SIGN_OFF}"
        record(path, Feedback(q, a or "…", better=better, model=who, source="benchmark"))
    return path


def held_out(run: str) -> tuple[list[list[dict]], list[str]]:
    from ownllm.utils import read_jsonl

    rows = read_jsonl(os.path.join(run, "data", "test.jsonl"))
    return [r["messages"][:-1] for r in rows], [r["messages"][-1]["content"] for r in rows]


def sign_off_questions(run: str, half: str) -> list[list[dict]]:
    """The questions the sign-off is counted on: the run's test questions and the training questions the feedback
    does not ask, each once, shuffled with a fixed seed; the first half is ``dev``, the second ``report``."""
    from ownllm.utils import read_jsonl

    asked = {r["messages"][0]["content"] for r in read_jsonl(os.path.join(run, "feedback.jsonl"))}
    seen, pool = set(asked), []
    for name in ("test", "train"):
        for r in read_jsonl(os.path.join(run, "data", f"{name}.jsonl")):
            q = r["messages"][:-1]
            if q[-1]["content"] not in seen:
                seen.add(q[-1]["content"])
                pool.append(q)
    random.Random(7).shuffle(pool)
    return pool[: len(pool) // 2] if half == "dev" else pool[len(pool) // 2:]


def behaviour(run: str, questions, refs, signing) -> dict:
    from ownllm.evaluation.metrics import contains

    answers = _answers(run, questions)
    signed = _answers(run, signing)
    return {"sign_off": sum(SIGN_OFF.lower()[:30] in a.lower() for a in signed) / len(signed),
            "contains": sum(contains(a, r) for a, r in zip(answers, refs)) / len(refs), "example": signed[0]}


def stage(run: str, method: str, tmp: str, sets: dict, n: int, half: str, signing: list) -> dict:
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.training.config import TrainConfig
    from ownllm.training.trainer import Trainer

    copy = os.path.join(tmp, f"{method}-{n}")
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    questions, refs = held_out(copy)
    start = time.time()
    summary = Trainer(config=TrainConfig(data=copy, out=copy, method=method, seed=42 + n, **sets)).continue_with(
        os.path.join(copy, "feedback.jsonl"))
    seconds = time.time() - start
    result = evaluate(copy)
    g = ((result.get("general_answers") or {}).get("halves") or {}).get(half) or {}
    pref = result["tuned"].get("preference") or {}
    return {"method": method, "run": n, "stage_seconds": round(seconds, 1), "steps": summary["global_step"],
            **behaviour(copy, questions, refs, signing), "kept_share": g.get("kept_share"),
            "kept": g.get("kept"), "general_drift": summary.get("general_drift"),
            "base_right": g.get("base_right"), "pref_accuracy": pref.get("accuracy"),
            "pref_margin": pref.get("margin"), "train_accuracy_last": summary["preference"]["train_accuracy_last"]}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo", help="the supervised run to start from (trained here when missing)")
    ap.add_argument("--methods", default="dpo,kto,orpo")
    ap.add_argument("--rows", type=int, default=40, help="feedback rows written by the rule")
    ap.add_argument("--runs", type=int, default=1, help="runs of each method (seeds 42, 43, ...)")
    ap.add_argument("--half", choices=("dev", "report"), default="report",
                    help="the half of the sign-off questions and of the general probe to score (dev: for choosing)")
    ap.add_argument("--set", nargs="*", default=[],
                    help="TrainConfig overrides for every stage, e.g. lr=1e-4 'hf_args={\"beta\": 0.5}'")
    args = ap.parse_args()
    sets = train_overrides(args.set)
    half = args.half
    with tempfile.TemporaryDirectory() as tmp:
        base, sft_seconds = supervised_run(args.run, tmp)
        run = os.path.join(tmp, "start")
        shutil.copytree(base, run, ignore=shutil.ignore_patterns("checkpoints"))  # a stage needs the adapter only
        write_feedback(run, args.rows, 42)
        questions, refs = held_out(run)
        signing = sign_off_questions(run, half)
        before = behaviour(run, questions, refs, signing)
        print(f"supervised run {base}: sign-off {before['sign_off']:.0%} of {len(signing)} {half}-half questions, "
              f"contains {before['contains']:.0%} on {len(refs)} test questions; trained in {sft_seconds:.0f} s; "
              f"stages: {sets or 'the defaults'}", flush=True)
        results = []
        for method in args.methods.split(","):
            for n in range(args.runs):
                r = stage(run, method, tmp, sets, n, half, signing)
                results.append(r)
                kept = f"{r['kept']}/{r['base_right']} ({r['kept_share']:.0%})" if r["base_right"] else "n/a"
                print(f"{method:<5} run {n}: sign-off {r['sign_off']:.0%}, contains {r['contains']:.0%} "
                      f"(run's {before['contains']:.0%}), general kept {kept}, preference accuracy on held-out pairs "
                      f"{r['pref_accuracy']}, stage {r['stage_seconds']:.0f} s ({r['stage_seconds'] / sft_seconds:.2f}× "
                      f"the supervised run), {r['steps']} steps, general drift {r['general_drift']}; "
                      f"e.g. {r['example'][:120]!r}", flush=True)
        for method in args.methods.split(","):
            rs = [r for r in results if r["method"] == method]
            print(f"{method:<5} over {len(rs)} runs: sign-off {median_range(rs, 'sign_off', '{:.0%}'.format)}, "
                  f"contains {median_range(rs, 'contains', '{:.0%}'.format)}, kept "
                  f"{median_range(rs, 'kept_share', '{:.0%}'.format)}, stage "
                  f"{median_range(rs, 'stage_seconds', '{:.0f} s'.format)}", flush=True)
    print(json.dumps({"supervised": {**before, "train_seconds": sft_seconds}, "stages": results}, indent=1,
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
