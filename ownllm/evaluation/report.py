"""report.md and a self-contained report.html (every model or user text escaped)."""
from __future__ import annotations

import base64
import html
import os

from ownllm.rundir import RunDir, read_json
from ownllm.utils import atomic_write

ROWS = ["contains", "exact_match", "token_f1", "rouge_l", "bleu", "choice_accuracy", "test_loss", "perplexity",
        "general_perplexity", "stopped_within_budget", "seconds_per_answer", "ms_per_token"]
LOWER_IS_BETTER = {"test_loss", "perplexity", "general_perplexity", "seconds_per_answer", "ms_per_token"}


def outcomes(samples: list[dict]) -> tuple[dict, list, list]:
    """Wins/losses/ties on token F1, and the five biggest improvements and regressions."""
    diffs = [(s["tuned_scores"]["token_f1"] - s["base_scores"]["token_f1"], s) for s in samples if "base_scores" in s]
    counts = {"wins": sum(d > 1e-9 for d, _ in diffs), "losses": sum(d < -1e-9 for d, _ in diffs),
              "ties": sum(abs(d) <= 1e-9 for d, _ in diffs)}
    ranked = sorted(diffs, key=lambda x: x[0])
    return counts, [s for d, s in reversed(ranked[-5:]) if d > 0], [s for d, s in ranked[:5] if d < 0]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def settings_chosen(run: RunDir) -> dict | None:
    """Which settings the run trained with and how they were chosen: by ``ownllm tune`` (its rule, the trial and
    what the search saw), given by the person, or the defaults of the data's size regime (and why)."""
    summary, plan = run.summary() or {}, run.plan() or {}
    if not summary.get("settings"):
        return None
    out = {"values": summary["settings"], "regime": summary.get("regime") or plan.get("regime")}
    tuned = summary.get("tuned_by")
    if tuned:
        tune = read_json(os.path.join(run.path, "tune", "tune.json")) or {}
        trials = tune.get("trials") or []
        out.update(how="tune", rule=tuned["rule"], trial=tuned["trial"], trials=len(trials),
                   pruned=sum(t["state"] == "pruned" for t in trials), searched=sorted(tuned["params"]),
                   scores=[t["score"] for t in trials if t.get("score") is not None])
    else:
        by = plan.get("chosen_by") or {}
        out.update(how="given" if by and all(v == "given" for v in by.values()) else "defaults",
                   given=sorted(k for k, v in by.items() if v == "given"))
    return out


def settings_sentence(chosen: dict | None) -> str:
    """The report card's sentence on how the settings were chosen."""
    if not chosen:
        return ""
    v = chosen["values"]
    values = ", ".join(f"{name} {v[key]:g}" if isinstance(v.get(key), (int, float)) else f"{name} {v[key]}"
                       for key, name in (("lr", "learning rate"), ("lora_r", "rank"), ("epochs", "epochs"),
                                         ("max_steps", "max steps")) if v.get(key) is not None)
    if chosen["how"] == "tune":
        scores = chosen["scores"]
        seen = f"; scores {min(scores):.3f}–{max(scores):.3f}" if scores else ""
        return (f"Settings ({values}) chosen by `ownllm tune`: trial {chosen['trial']} of {chosen['trials']} "
                f"({chosen['pruned']} stopped early{seen}), by {chosen['rule']}.")
    regime = chosen.get("regime") or {}
    why = f" for a {regime['name']} dataset: {regime['why']}" if regime.get("name") else ""
    given = f" ({', '.join(chosen['given'])} as given)" if chosen.get("given") else ""
    return f"Settings ({values}): {'as given' if chosen['how'] == 'given' else 'the defaults' + why}{given}."


def to_markdown(result: dict, samples: list[dict]) -> str:
    base, tuned = result.get("base"), result["tuned"]
    lines = ["# Evaluation report", "", f"**{result['headline']}**", ""]
    lines += [f"> ⚠ {w}" for w in forgetting_warnings(result)] + ([""] if forgetting_warnings(result) else [])
    lines += _kept_markdown(result)
    chosen = settings_sentence(result.get("settings_chosen"))
    lines += [chosen, ""] if chosen else []
    lines += ["| metric | base | tuned |", "|---|---|---|"] if base else ["| metric | tuned |", "|---|---|"]
    for k in ROWS:
        if k in tuned:
            lines.append(f"| {k} | {_fmt(base[k])} | {_fmt(tuned[k])} |" if base else f"| {k} | {_fmt(tuned[k])} |")
    lines += [""] + _side_by_side_markdown(result)
    if base:
        counts, better, worse = outcomes(samples)
        lines += ["", f"Per question (token F1): {counts['wins']} better, {counts['losses']} worse, "
                  f"{counts['ties']} the same.", ""]
        for title, group in (("Biggest improvements", better), ("Biggest regressions", worse)):
            lines += [f"## {title}", ""]
            for s in group:
                lines += [f"- **Q:** {_one(s['prompt'])}", f"  - reference: {_one(s['reference'])}",
                          f"  - base: {_one(s['base'])}", f"  - tuned: {_one(s['tuned'])}"]
            lines.append("" if group else "(none)\n")
    return "\n".join(lines) + "\n"


SIDE_BY_SIDE = ["contains", "choice_accuracy", "token_f1", "test_loss"]


def side_by_side(result: dict) -> tuple[list[str], list[list[str]]]:
    """A continual run's test sets side by side, this stage's first: a header and one row per metric
    (base and tuned under each set). Empty when the run has no earlier stage."""
    earlier = result.get("earlier_tests") or []
    if not earlier:
        return [], []
    sets = [{"name": "this stage", "samples": result["samples"], "tuned": result["tuned"],
             **({"base": result["base"]} if "base" in result else {})}] + earlier
    header = ["metric"] + [f"{s['name']} ({s['samples']} questions) {side}" for s in sets
                           for side in (("base", "tuned") if "base" in s else ("tuned",))]
    rows = []
    for k in SIDE_BY_SIDE:
        if all(k in s["tuned"] for s in sets):
            rows.append([k] + [_fmt(s[side][k]) for s in sets for side in (("base", "tuned") if "base" in s else ("tuned",))])
    return header, rows


def _side_by_side_markdown(result: dict) -> list[str]:
    header, rows = side_by_side(result)
    if not header:
        return []
    return (["## Test sets side by side (continual learning)", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def forgetting_warnings(result: dict) -> list[str]:
    """One sentence per sign that the fine-tune broke what the base model knew."""
    from ownllm.evaluation.probe import KEPT_WARN, PERPLEXITY_WARN

    out = []
    g = result.get("general_answers") or {}
    if g.get("warning"):
        a = g.get("all", g)  # the warning is decided on every probe question
        out.append(f"the tuned model kept only {a['kept']} of the {a['base_right']} general questions the base model "
                   f"answered right ({a['kept_share']:.0%}, below {KEPT_WARN:.0%}): it has forgotten general "
                   "knowledge (try --protect strong, fewer epochs or a lower --lr)")
    change = result.get("general_perplexity_change")
    if change is not None and change > PERPLEXITY_WARN:
        out.append(f"general-text perplexity rose by {change:.0%} (above {PERPLEXITY_WARN:.0%}): the model may have "
                   "forgotten general knowledge")
    if result.get("general_check_skipped"):
        out.append(result["general_check_skipped"])
    return out


def _kept_markdown(result: dict) -> list[str]:
    g = result.get("general_answers")
    if not g:
        return []
    lines = ["## What the model kept", "", f"General probe ({g['questions']} short questions in English and Chinese, "
             f"shipped with ownllm): {_kept_sentence(g)}", ""]
    if result.get("base_model_note"):
        lines += [result["base_model_note"], ""]
    if g["lost_examples"]:
        lines += ["Answers lost:", ""] + [f"- **Q:** {_one(x['question'])} — base: {_one(x['base'])} — tuned: "
                                          f"{_one(x['tuned'])}" for x in g["lost_examples"]] + [""]
    return lines


def _kept_sentence(g: dict) -> str:
    said = (f"on its report half, the base model answered {g['base_right']} right; the tuned model still answers "
            f"{g['kept']} of them.")
    if "all" in g:
        said += (f" On all its questions (the development half, which ownllm's settings were chosen on, included): "
                 f"{g['all']['kept']} of {g['all']['base_right']}.")
    return said[0].upper() + said[1:]


def _one(text: str) -> str:
    return text.replace("\n", " ")[:300]


def _bars(result: dict) -> str:
    rows = []
    for k in ("contains", "exact_match", "token_f1", "rouge_l"):
        for side, color in (("base", "#999"), ("tuned", "#2a7")):
            if side in result and k in result[side]:
                v = result[side][k]
                rows.append(f'<div class="bar"><span>{k} ({side})</span><i style="width:{v * 100:.1f}%;'
                            f'background:{color}"></i><b>{v:.0%}</b></div>')
    return "\n".join(rows)


def to_html(run, result: dict, samples: list[dict]) -> str:
    e = html.escape
    plot = RunDir(run).loss_png
    img = ""
    if os.path.exists(plot):
        with open(plot, "rb") as f:
            img = f'<img alt="loss curves" src="data:image/png;base64,{base64.b64encode(f.read()).decode()}">'
    base = result.get("base")
    head = "<tr><th>metric</th>" + ("<th>base</th>" if base else "") + "<th>tuned</th></tr>"
    table = "".join(f"<tr><td>{k}</td>" + (f"<td>{_fmt(base[k])}</td>" if base else "") + f"<td>{_fmt(result['tuned'][k])}</td></tr>"
                    for k in ROWS if k in result["tuned"])
    answers = "".join(
        f"<tr><td>{e(s['prompt'])}</td><td>{e(s['reference'])}</td>" + (f"<td>{e(s.get('base', ''))}</td>" if base else "")
        + f"<td>{e(s['tuned'])}</td></tr>" for s in samples)
    warn = "".join(f'<p class="warn">⚠ {e(w)}</p>' for w in forgetting_warnings(result))
    g = result.get("general_answers")
    kept = "" if not g else (
        f"<h2>What the model kept</h2><p>General probe ({g['questions']} short questions in English and Chinese): "
        f"{e(_kept_sentence(g))}</p>"
        + ("<table><tr><th>question</th><th>base</th><th>tuned</th></tr>" + "".join(
            f"<tr><td>{e(x['question'])}</td><td>{e(x['base'])}</td><td>{e(x['tuned'])}</td></tr>"
            for x in g["lost_examples"]) + "</table>" if g["lost_examples"] else ""))
    chosen = settings_sentence(result.get("settings_chosen"))
    chosen = f"<h2>Settings</h2><p>{e(chosen)}</p>" if chosen else ""
    header, rows = side_by_side(result)
    stages = "" if not header else (
        "<h2>Test sets side by side (continual learning)</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
        + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ownllm evaluation</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}
.bar{{display:flex;align-items:center;gap:8px;margin:2px 0}}.bar span{{width:160px}}.bar i{{display:block;height:14px}}
.warn{{color:#a40}}img{{max-width:100%}}</style></head><body>
<h1>Evaluation report</h1><p><b>{e(result['headline'])}</b></p>{warn}{kept}{chosen}
<h2>Metrics</h2><table>{head}{table}</table>{stages}<h2>Accuracy</h2>{_bars(result)}
<h2>Training curves</h2>{img}
<h2>Answers</h2><table><tr><th>question</th><th>reference</th>{'<th>base</th>' if base else ''}<th>tuned</th></tr>{answers}</table>
</body></html>"""


def write_report(run, result: dict, samples: list[dict]) -> None:
    """eval/report.md and eval/report.html of the ``RunDir`` ``run``."""
    atomic_write(run.eval_file("report.md"), to_markdown(result, samples))
    atomic_write(run.eval_file("report.html"), to_html(run, result, samples))
