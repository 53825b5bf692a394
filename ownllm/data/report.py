"""The data doctor: counts, rejections by reason, duplicates, token lengths, splits, leakage."""
from __future__ import annotations

import functools
import json
import os
from collections import Counter

from ownllm.data.validate import REASONS
from ownllm.utils import atomic_write, write_jsonl

EXAMPLES_PER_REASON = 3
DUPLICATE_PAIRS = 20


def percentile(sorted_vals: list[int], q: float) -> int:
    """The q-quantile of already sorted values (nearest rank); 0 for none."""
    if not sorted_vals:
        return 0
    return sorted_vals[min(len(sorted_vals) - 1, int(round(q * (len(sorted_vals) - 1))))]


def token_lengths(rows: list[dict], tokenizer, template: str | None) -> list[int]:
    """Tokens per rendered row (chat template applied), tokenized in one batch."""
    from ownllm.models.templates import chat_template_for, render_chat

    tmpl = chat_template_for(tokenizer, template)
    lengths = []
    for start in range(0, len(rows), 2048):  # chunks keep memory flat on 100k-row datasets
        chunk = rows[start:start + 2048]
        texts = [r["text"] if "text" in r else
                 render_chat(tokenizer, r["messages"], tmpl) for r in chunk]
        enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths += [len(x) + (1 if "text" in r else 0) for x, r in zip(enc, chunk)]
    return lengths


@functools.lru_cache(maxsize=4)
def shared_tokenizer(model: str | None):
    """The tokenizer used to count tokens while preparing (loaded once per model; never modified)."""
    from ownllm.models.load import load_tokenizer
    from ownllm.models.registry import DEFAULT_MODEL

    return load_tokenizer(model or DEFAULT_MODEL)


def _formats(schemas: dict) -> tuple[str, str, dict, dict]:
    """(format, why, columns, per-file formats): one format when every source has the same one."""
    known = {name: s for name, s in schemas.items() if s is not None}
    kinds = {s.format for s in known.values()}
    per_file = {name: {"format": s.format, "why": s.why, "columns": s.columns} for name, s in known.items()}
    if len(kinds) == 1:
        first = next(iter(known.values()))
        return first.format, first.why, first.columns, per_file
    if not kinds:
        return "unknown", "no row could be read", {}, per_file
    why = "each file detected on its own: " + "; ".join(
        f"{os.path.basename(n)} {s.format}" for n, s in known.items())
    return "mixed", why, {}, per_file


def build_report(cfg, schemas, files, skipped, total, rejected, stats, train, val, test, leaks,
                 encodings=None) -> dict:
    from ownllm.data.regime import size_regime
    from ownllm.models.registry import DEFAULT_MODEL

    tokenizer = shared_tokenizer(cfg.model)
    lengths = {name: token_lengths(rows, tokenizer, cfg.template) for name, rows in
               (("train", train), ("val", val), ("test", test))}
    every = sorted(lengths["train"] + lengths["val"] + lengths["test"])
    by_reason = Counter(r["reason"] for r in rejected)
    examples, pairs = {}, []
    for r in rejected:
        ex = examples.setdefault(r["reason"], [])
        if len(ex) < EXAMPLES_PER_REASON:
            ex.append({"source": r["source"], "line": r["line"], "detail": r["detail"]})
        if "kept_row" in r and len(pairs) < DUPLICATE_PAIRS:
            pairs.append({"reason": r["reason"], "removed": f"{r['source']}:{r['line']}",
                          "removed_row": r.get("removed_row", ""), "kept": r.get("same_as") or r["detail"],
                          "kept_row": r["kept_row"]})
    fmt, why, columns, per_file = _formats(schemas)
    report = {
        "format": fmt, "format_reason": why, "columns": columns, "formats_by_file": per_file,
        "encodings": {f: e.replace("-sig", "") for f, e in (encodings or {}).items()},
        "files": files, "skipped_files": skipped, "model": cfg.model or DEFAULT_MODEL,
        "total_rows": total, "kept_rows": len(train) + len(val) + len(test),
        "rejected_rows": len(rejected), "rejected_by_reason": dict(by_reason.most_common()),
        "rejected_examples": examples, "removed_pairs": pairs,
        "duplicates_removed": stats.get("duplicate", 0) + stats.get("near_duplicate", 0),
        "exact_duplicates": stats.get("duplicate", 0), "near_duplicates": stats.get("near_duplicate", 0),
        "leakage_removed": leaks, "pii_masked": stats.get("pii_masked", 0),
        "cleaning": {"normalize": cfg.normalize, "strip_html": cfg.strip_html,
                     "rows_changed_by_nfkc": stats.get("changed_nfkc", 0),
                     "rows_changed_by_html_stripping": stats.get("changed_html", 0)},
        "splits": {"train": len(train), "val": len(val), "test": len(test)},
        "regime": size_regime(len(train), len(val), len(test)),
        "tokens": {"mean": round(sum(every) / len(every), 1) if every else 0, "p50": percentile(every, 0.5),
                   "p95": percentile(every, 0.95), "max": every[-1] if every else 0},
        "max_seq_len": cfg.max_seq_len,
        "truncated_rows": sum(1 for n in every if n > cfg.max_seq_len),
        "train_tokens_per_epoch": sum(min(n, cfg.max_seq_len) for n in lengths["train"]),
        "settings": {"split": list(cfg.split), "seed": cfg.seed, "dedup": cfg.dedup, "pii": cfg.pii,
                     "normalize": cfg.normalize, "strip_html": cfg.strip_html,
                     "system": cfg.system, "template": cfg.template, "format": cfg.format,
                     "columns": dict(cfg.columns) or None, "strict": cfg.strict, "max_rejected": cfg.max_rejected,
                     "max_seq_len": cfg.max_seq_len, "model": cfg.model},
    }
    from ownllm.data.preference import counts, supervised

    judged = counts(train + val + test)
    if any(judged["kinds"][k] for k in ("pair", "good", "bad")) or judged["answers_by_model"]:
        report["preference"] = judged
    report["length_histogram"] = length_histogram(every, cfg.max_seq_len)
    report["marked_examples"] = _marked_examples(supervised(train)[:2], tokenizer, cfg)
    report["_lengths"] = every
    return report


def length_histogram(lengths: list[int], max_seq_len: int, bins: int = 20) -> dict:
    """Token-length counts in ``bins`` equal bins from 0 to the longest row; ``truncated`` rows pass the limit."""
    width = max(1, -(-(max(lengths, default=0) + 1) // bins))  # ceil: the longest row falls in the last bin
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, n // width)] += 1
    return {"edges": [i * width for i in range(bins + 1)], "counts": counts, "max_seq_len": max_seq_len,
            "truncated": sum(n > max_seq_len for n in lengths)}


def lengths_from_histogram(hist: dict | None) -> list[int]:
    """Row lengths as a :func:`length_histogram` keeps them: each row at its bin's middle, cut at max_seq_len."""
    if not hist:
        return []
    edges, cap = hist["edges"], hist["max_seq_len"]
    return [min(cap, (lo + hi) // 2) for lo, hi, n in zip(edges, edges[1:], hist["counts"]) for _ in range(n)]


def _marked_examples(rows, tokenizer, cfg) -> list[str]:
    from ownllm.models.templates import chat_template_for
    from ownllm.data.render import marked_example, render_row

    tmpl = chat_template_for(tokenizer, cfg.template)
    return [marked_example(render_row(r, tokenizer, template=tmpl, max_seq_len=cfg.max_seq_len), tokenizer)
            for r in rows]


def to_markdown(report: dict) -> str:
    r = report
    lines = [
        "# Data report", "",
        f"- format: **{r['format']}** — {r['format_reason']}",
        f"- files: {', '.join(r['files']) or '(in-memory rows)'}",
    ]
    if r.get("format") == "mixed":
        lines += [f"  - {f}: {d['format']} — {d['why']}" for f, d in r.get("formats_by_file", {}).items()]
    for f, enc in r.get("encodings", {}).items():
        if enc != "utf-8":
            lines.append(f"- encoding of {f}: **{enc}** (decodes the whole file)")
    if r["skipped_files"]:
        lines.append(f"- skipped (unsupported type, or this run's own data/): {', '.join(r['skipped_files'])}")
    cleaning = r.get("cleaning", {})
    if cleaning.get("normalize") == "nfkc" or cleaning.get("strip_html"):
        lines.append(f"- optional cleaning: {cleaning.get('rows_changed_by_nfkc', 0)} rows changed by NFKC, "
                     f"{cleaning.get('rows_changed_by_html_stripping', 0)} by HTML stripping")
    lines += [
        f"- rows: {r['total_rows']} read, {r['kept_rows']} kept, {r['rejected_rows']} rejected "
        f"(see rejected.jsonl)",
        f"- duplicates removed: {r['duplicates_removed']} ({r['exact_duplicates']} exact, "
        f"{r['near_duplicates']} near)",
        f"- leakage: {r['leakage_removed']} train rows were near-duplicates of val/test rows and were removed",
        f"- PII items masked: {r['pii_masked']}",
        f"- splits: train {r['splits']['train']}, val {r['splits']['val']}, test {r['splits']['test']}",
        *([f"- size: **{r['regime']['name']}** — {r['regime']['why']}"] if r.get("regime") else []),
        *preference_lines(r.get("preference")),
        f"- tokens per row ({r['model']}): mean {r['tokens']['mean']}, p50 {r['tokens']['p50']}, "
        f"p95 {r['tokens']['p95']}, max {r['tokens']['max']}",
        f"- rows longer than --max-seq-len {r['max_seq_len']} (truncated in training): {r['truncated_rows']}",
        f"- training tokens per epoch: {r['train_tokens_per_epoch']:,}", "",
    ]
    if r["rejected_by_reason"]:
        lines += ["## Rejected rows", "", "| reason | rows | meaning | examples |", "|---|---|---|---|"]
        for reason, n in r["rejected_by_reason"].items():
            ex = "; ".join(f"{e['source']}:{e['line']} {e['detail']}" for e in r["rejected_examples"].get(reason, []))
            lines.append(f"| {reason} | {n} | {REASONS.get(reason, '')} | {_md_escape(ex)} |")
        lines.append("")
    if r.get("removed_pairs"):
        lines += ["## Removed as duplicates or leakage (side by side; judge them)", "",
                  "| reason | removed | its text | kept | kept text |", "|---|---|---|---|---|"]
        lines += [f"| {p['reason']} | {_md_escape(p['removed'])} | {_md_escape(p['removed_row'])} | "
                  f"{_md_escape(str(p['kept']))} | {_md_escape(p['kept_row'])} |" for p in r["removed_pairs"]]
        lines.append("")
    lines += ["## Token lengths", "", "![token length histogram](length_histogram.png)", ""]
    for i, ex in enumerate(report.get("marked_examples", []), 1):
        lines += [f"## Example {i} (trained tokens between ⟦ ⟧)", "", "```text", ex, "```", ""]
    return "\n".join(lines)


def preference_lines(p: dict | None) -> list[str]:
    """The data report's lines on preference rows (``data.preference``): what each kind is for, and whose
    answers the feedback judged."""
    if not p:
        return []
    k = p["kinds"]
    lines = [f"- preference rows: {k['pair']} pairs (a chosen and a rejected answer: DPO, ORPO), {k['good']} answers "
             f"labelled good and {k['bad']} bad (KTO, which also reads a pair as one good and one bad answer), {k['supervised']} supervised rows; "
             f"supervised training learns the chosen and good answers, never a bad one"]
    models = p.get("answers_by_model") or {}
    if len(models) > 1:
        lines.append("- **the feedback judged answers of several models**: " + ", ".join(
            f"{m} ({n} rows)" for m, n in models.items()) + "; a preference stage learns most from answers of the "
            "model it tunes (train on one model's rows, or check that the others' still apply)")
    elif models:
        lines.append(f"- the feedback judged answers of {next(iter(models))}")
    return lines


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def plot_lengths(lengths: list[int], max_seq_len: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(lengths or [0], bins=40, color="#4C72B0")
    ax.axvline(max_seq_len, color="#C44E52", linestyle="--", label=f"--max-seq-len {max_seq_len}")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(prepared, out: str) -> None:
    """The prepare stage's part of the run directory ``out``: data/ (splits, rejected rows, report, plot)."""
    from ownllm.rundir import RunDir

    run = RunDir(out)
    os.makedirs(run.data_dir, exist_ok=True)
    for name, rows in (("train", prepared.train), ("val", prepared.val), ("test", prepared.test),
                       ("rejected", prepared.rejected)):
        write_jsonl(run.split(name), rows)
    public = {k: v for k, v in prepared.report.items() if not k.startswith("_")}
    atomic_write(run.data_file("report.json"), json.dumps(public, ensure_ascii=False, indent=2))
    atomic_write(run.data_file("report.md"), to_markdown(prepared.report))
    plot_lengths(prepared.report.get("_lengths", []), prepared.report["max_seq_len"],
                 run.data_file("length_histogram.png"))
