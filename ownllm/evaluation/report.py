"""report.md and a self-contained report.html (every model or user text escaped)."""
from __future__ import annotations

import base64
import html
import os

from ownllm.utils import atomic_write

ROWS = ["contains", "exact_match", "token_f1", "rouge_l", "bleu", "choice_accuracy", "val_loss", "perplexity",
        "general_perplexity", "seconds_per_answer", "tokens_per_second"]
LOWER_IS_BETTER = {"val_loss", "perplexity", "general_perplexity", "seconds_per_answer"}


def outcomes(samples: list[dict]) -> tuple[dict, list, list]:
    """Wins/losses/ties on token F1, and the five biggest improvements and regressions."""
    diffs = [(s["tuned_scores"]["token_f1"] - s["base_scores"]["token_f1"], s) for s in samples if "base_scores" in s]
    counts = {"wins": sum(d > 1e-9 for d, _ in diffs), "losses": sum(d < -1e-9 for d, _ in diffs),
              "ties": sum(abs(d) <= 1e-9 for d, _ in diffs)}
    ranked = sorted(diffs, key=lambda x: x[0])
    return counts, [s for d, s in reversed(ranked[-5:]) if d > 0], [s for d, s in ranked[:5] if d < 0]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def to_markdown(result: dict, samples: list[dict]) -> str:
    base, tuned = result.get("base"), result["tuned"]
    lines = ["# Evaluation report", "", f"**{result['headline']}**", ""]
    if result.get("forgetting_warning"):
        lines += [f"> ⚠ general-text perplexity rose by {result['general_perplexity_change']:.0%}: "
                  "the model may have forgotten general knowledge.", ""]
    lines += ["| metric | base | tuned |", "|---|---|---|"] if base else ["| metric | tuned |", "|---|---|"]
    for k in ROWS:
        if k in tuned:
            lines.append(f"| {k} | {_fmt(base[k])} | {_fmt(tuned[k])} |" if base else f"| {k} | {_fmt(tuned[k])} |")
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


def to_html(run_dir: str, result: dict, samples: list[dict]) -> str:
    e = html.escape
    plot = os.path.join(run_dir, "loss.png")
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
    warn = (f'<p class="warn">General-text perplexity rose by {result["general_perplexity_change"]:.0%}: '
            "the model may have forgotten general knowledge.</p>") if result.get("forgetting_warning") else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ownllm evaluation</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}
.bar{{display:flex;align-items:center;gap:8px;margin:2px 0}}.bar span{{width:160px}}.bar i{{display:block;height:14px}}
.warn{{color:#a40}}img{{max-width:100%}}</style></head><body>
<h1>Evaluation report</h1><p><b>{e(result['headline'])}</b></p>{warn}
<h2>Metrics</h2><table>{head}{table}</table><h2>Accuracy</h2>{_bars(result)}
<h2>Training curves</h2>{img}
<h2>Answers</h2><table><tr><th>question</th><th>reference</th>{'<th>base</th>' if base else ''}<th>tuned</th></tr>{answers}</table>
</body></html>"""


def write_report(run_dir: str, result: dict, samples: list[dict]) -> None:
    out = os.path.join(run_dir, "eval")
    atomic_write(os.path.join(out, "report.md"), to_markdown(result, samples))
    atomic_write(os.path.join(out, "report.html"), to_html(run_dir, result, samples))
