"""`ownllm data from-docs`: documents → question–answer rows that `ownllm data prepare` reads unchanged.

read (structure, pages, headings) → extract the FAQ the documents already state → [chunk → ask a
teacher for grounded pairs → check each against its chunk → judge] → write ``OUT.jsonl`` (one row per
phrasing, with ``source`` and ``fact``) and ``OUT.report.{md,json}``. Rows of one fact share ``fact``:
`data prepare` holds one phrasing of a fact out for testing and trains on the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ownllm.config import setting
from ownllm.data import synthesis
from ownllm.data.documents import (chunk_passages, list_documents, passage_rows, read_document, source_of)
from ownllm.data.dedup import Deduplicator
from ownllm.data.faq import extract_pairs
from ownllm.errors import ConfigError, DataError

EXAMPLES_PER_REASON = 3
_COUNTING = threading.Lock()


@dataclass
class FromDocsConfig:
    """`ownllm data from-docs`'s settings: its flags and the studio's documents request."""
    teacher: str | None = setting(None, "an OpenAI-compatible /v1 URL (Ollama, vLLM, a hosted API, `ownllm serve`) "
                                        "or a model run here (alias, folder, run directory); without it only the "
                                        "documents' own FAQ is used")
    teacher_key_env: str | None = setting(None, "environment variable holding the teacher's API key")
    teacher_model: str | None = setting(None, "model name at the teacher URL (default: the first it lists)")
    per_chunk: int = setting(3, "pairs asked per chunk (default 3)")
    judge: bool = setting(False, "a second teacher pass scores each kept pair with a rubric")
    judge_threshold: int = setting(7, "lowest judge score kept, 1-10 (default 7)")
    chunk_tokens: int = setting(320, "chunk size in the target model's tokens (default 320)")
    overlap: int = setting(48, "tokens a chunk repeats from the one before (default 48)")
    also_text: bool = setting(False, "also write the documents' sections as training text to OUT.text.jsonl "
                                     "(continued pre-training rows, always in the training split); give both files "
                                     "to `data prepare`")
    concurrency: int = setting(4, "teacher requests at once (default 4)")
    max_tokens: int = setting(768, "tokens per teacher reply", cli=False)
    model: str | None = setting(None, "the model you will train, whose tokenizer sizes chunks")
    cache: bool = setting(True, "reuse cached teacher replies (--no-cache asks again)", cli=False)
    progress: bool = setting(True, "a progress bar", cli=False)

    def validate(self) -> None:
        problems = []
        if not 1 <= self.per_chunk <= 20:
            problems.append(f"--per-chunk must be between 1 and 20 (got {self.per_chunk})")
        if not 1 <= self.judge_threshold <= 10:
            problems.append(f"--judge-threshold must be between 1 and 10 (got {self.judge_threshold})")
        if self.chunk_tokens < 32:
            problems.append(f"--chunk-tokens must be at least 32 (got {self.chunk_tokens})")
        if not 0 <= self.overlap < self.chunk_tokens:
            problems.append(f"--overlap must be between 0 and --chunk-tokens (got {self.overlap})")
        if self.concurrency < 1:
            problems.append(f"--concurrency must be at least 1 (got {self.concurrency})")
        if self.judge and not self.teacher:
            problems.append("--judge needs a --teacher to ask")
        if self.teacher_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", self.teacher_key_env):
            problems.append(f"--teacher-key-env must name an environment variable (got {self.teacher_key_env!r})")
        if problems:
            raise ConfigError(problems)


def docs_to_data(paths, out: str, client=None, **options) -> dict:
    """Read ``paths`` (documents or folders), write ``out`` (.jsonl) and its report; return the report.
    Options are :class:`FromDocsConfig`'s fields. ``client``: a teacher object with ``id`` and
    ``complete(messages, max_tokens) -> (text, usage)``, instead of one built from ``teacher``."""
    cfg = FromDocsConfig(**options)
    cfg.validate()
    if not str(out).endswith(".jsonl"):
        raise ConfigError(f"--out {out} must be a .jsonl file", hint="e.g. --out my_docs.jsonl")
    began = time.time()
    files, skipped = list_documents(paths)
    docs, unread = {}, {}
    for f in files:
        try:
            docs[f] = read_document(f)
        except DataError as e:
            unread[f] = str(e)
    if not docs:
        raise DataError(f"none of the documents could be read: {next(iter(unread.values()))}")
    # the rule `data prepare` applies: the same FAQ or section in two files (a DOCX and its PDF) is written once
    rows, questions, dedup, found = [], synthesis.QuestionIndex(), Deduplicator("near"), Counter()
    for f, passages in docs.items():
        for n, pair in enumerate(extract_pairs(passages)):
            row = _row(pair.question, pair.answer, source_of(pair.first), _fact(f, f"{pair.first.start}:{n}"),
                       "document")
            if dedup.check(row, (f, n))[0]:
                found["repeated"] += 1
                continue
            found[f] += 1
            questions.add(pair.question)
            rows.append(row)
    report = {"documents": [_doc_entry(f, p, found[f]) for f, p in docs.items()], "unread": unread,
              "skipped": skipped, "extracted_pairs": len(rows), "repeated_pairs": found["repeated"]}
    if cfg.teacher or client is not None:
        teacher = client or synthesis.make_teacher(cfg.teacher, cfg.teacher_key_env, cfg.teacher_model)
        from ownllm.data.report import shared_tokenizer

        tok = shared_tokenizer(cfg.model)
        measure = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
        chunks = [c for p in docs.values() for c in chunk_passages(p, measure, cfg.chunk_tokens, cfg.overlap)]
        taught, report["teacher"] = _synthesise(chunks, teacher, cfg, questions)
        rows += taught
    stem = out[: -len(".jsonl")]
    report.update(rows=len(rows), facts=len({r["fact"] for r in rows}), out=out)
    from ownllm.utils import atomic_write, write_jsonl

    if cfg.also_text:  # a file of its own: `data prepare` reads one format per file
        text_rows = [r for f, p in docs.items() for n, r in enumerate(passage_rows(p))
                     if not dedup.check(r, (f, "text", n))[0]]
        write_jsonl(stem + ".text.jsonl", text_rows)
        report.update(text_rows=len(text_rows), text_out=stem + ".text.jsonl")
    report["seconds"] = round(time.time() - began, 1)
    write_jsonl(out, rows)
    atomic_write(stem + ".report.json", json.dumps(report, ensure_ascii=False, indent=1))
    atomic_write(stem + ".report.md", to_markdown(report))
    t = report.get("teacher")
    if t and t["proposed"] == 0:
        raise synthesis.TeacherError(
            f"the teacher returned nothing usable for any of {t['chunks']} chunks "
            f"({t['chunks_malformed']} replies were not JSON, {t['chunks_without_pairs']} had no pairs)"
            + (f"; first reply: {t['first_reply'][:200]!r}" if t.get("first_reply") else ""),
            hint=f"the document's own FAQ rows are in {out}; try a larger teacher model; see {stem}.report.md")
    return report


def _row(question: str, answer: str, source: str, fact: str, origin: str, quote: str | None = None) -> dict:
    row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
           "source": source, "fact": fact, "origin": origin}
    if quote:
        row["quote"] = quote
    return row


def _fact(file: str, key) -> str:
    return hashlib.blake2b(f"{os.path.basename(file)}\x1f{key}".encode(), digest_size=6).hexdigest()


def _doc_entry(f: str, passages, extracted: int) -> dict:
    pages = {p.page for p in passages if p.page}
    return {"file": f, "passages": len(passages), "pages": len(pages) or None, "chars": passages[-1].end,
            "extracted": extracted}


def _ask(teacher, cache: synthesis.AnswerCache, messages: list[dict], max_tokens: int, stats: Counter) -> str:
    key = cache.key(teacher.id, messages)
    hit = cache.get(key)
    if hit is not None:
        with _COUNTING:
            stats["cached"] += 1
        return hit["reply"]
    reply, usage = teacher.complete(messages, max_tokens)
    with _COUNTING:  # several chunks are asked at once
        stats["calls"] += 1
        stats["prompt_tokens"] += usage.get("prompt_tokens", 0)
        stats["completion_tokens"] += usage.get("completion_tokens", 0)
    cache.put(key, {"reply": reply, "usage": usage})
    return reply


def _propose(chunk, teacher, cache, cfg: FromDocsConfig, stats: Counter) -> tuple[list[dict] | None, str]:
    """The teacher's pairs for one chunk (one retry when the reply is not JSON), and its last reply."""
    messages = synthesis.chunk_messages(chunk, cfg.per_chunk)
    reply = _ask(teacher, cache, messages, cfg.max_tokens, stats)
    pairs = synthesis.parse_pairs(reply)
    if pairs is None and not synthesis.has_no_pairs(reply):
        with _COUNTING:
            stats["retries"] += 1
        reply = _ask(teacher, cache, synthesis.retry_messages(messages, reply), cfg.max_tokens, stats)
        pairs = synthesis.parse_pairs(reply)
    return pairs, reply


def _synthesise(chunks, teacher, cfg: FromDocsConfig, questions: synthesis.QuestionIndex) -> tuple[list, dict]:
    from tqdm.auto import tqdm

    from ownllm.models.load import cache_dir

    cache = synthesis.AnswerCache(cache_dir("teacher") if cfg.cache else None)
    stats, rejected, examples = Counter(), Counter(), defaultdict(list)
    began = time.time()
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        futures = [pool.submit(_propose, c, teacher, cache, cfg, stats) for c in chunks]
        replies = [f.result() for f in tqdm(futures, desc="teacher", unit="chunk", disable=not cfg.progress)]
    checked, covered, first_reply = [], set(), None

    def reject(why, pair):
        rejected[why] += 1
        if len(examples[why]) < EXAMPLES_PER_REASON:
            examples[why].append(pair)

    for chunk, (pairs, reply) in zip(chunks, replies):
        first_reply = first_reply or reply
        if pairs is None:
            stats["chunks_malformed" if not synthesis.has_no_pairs(reply) else "chunks_without_pairs"] += 1
            continue
        for pair in pairs:
            stats["proposed"] += 1
            why = synthesis.check_pair(pair, chunk)
            if why:
                reject(why, pair)
            else:
                checked.append((chunk, pair))
    if cfg.judge:  # before the duplicate index: a pair the judge rejects must not block a later phrasing
        checked = _judged(checked, teacher, cache, cfg, stats, reject)
    candidates = []
    for chunk, pair in checked:
        kept_q = [q for q in dict.fromkeys(pair["questions"]) if not questions.duplicate(q)]
        if not kept_q:
            reject("duplicate_question", pair)
            continue
        for q in kept_q:
            questions.add(q)
        candidates.append((chunk, pair, kept_q))
    rows = []
    for chunk, pair, kept_q in candidates:
        covered.add(chunk.id)
        fact = _fact(chunk.file, synthesis.normalise(pair["quote"]))
        rows += [_row(q, pair["answer"], source_of(chunk), fact, "teacher", pair["quote"]) for q in kept_q]
    report = {"teacher": teacher.id, "chunks": len(chunks), "chunks_covered": len(covered),
              "covered_share": round(len(covered) / len(chunks), 3) if chunks else 0.0,
              "proposed": stats["proposed"], "kept": len(candidates), "kept_rows": len(rows),
              "rejected": dict(rejected), "examples": dict(examples), "calls": stats["calls"],
              "cached": stats["cached"], "retries": stats["retries"], "chunks_malformed": stats["chunks_malformed"],
              "chunks_without_pairs": stats["chunks_without_pairs"], "prompt_tokens": stats["prompt_tokens"],
              "completion_tokens": stats["completion_tokens"], "seconds": round(time.time() - began, 1),
              "judge_threshold": cfg.judge_threshold if cfg.judge else None,
              "first_reply": first_reply if not candidates else None}
    return rows, report


def _judged(checked, teacher, cache, cfg: FromDocsConfig, stats: Counter, reject) -> list:
    def score(item):
        _, pair = item
        return synthesis.parse_score(_ask(teacher, cache, synthesis.judge_messages(pair, pair["questions"][0]), 64,
                                          stats))

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        scores = list(pool.map(score, checked))
    kept = []
    for item, s in zip(checked, scores):
        if s is None or s < cfg.judge_threshold:
            reject("judge_below_threshold", dict(item[1], score=s))
        else:
            kept.append(item)
    return kept


def to_markdown(report: dict) -> str:
    lines = ["# Documents → data", "", f"{report['rows']} question–answer rows about {report['facts']} facts "
             f"written to `{report['out']}` in {report['seconds']} s.", "", "| document | passages | pages | "
             "characters | FAQ pairs found |", "|---|---|---|---|---|"]
    lines += [f"| {d['file']} | {d['passages']} | {d['pages'] or '—'} | {d['chars']:,} | {d['extracted']} |"
              for d in report["documents"]]
    if report["repeated_pairs"]:
        lines.append(f"\n{report['repeated_pairs']} FAQ pairs repeated in another document were written once.")
    for f, why in report["unread"].items():
        lines.append(f"\n**Not read**: {f}: {why}")
    t = report.get("teacher")
    if t:
        lines += ["", f"## Teacher ({t['teacher']})", "",
                  f"- chunks: {t['chunks']}, covered by a kept pair: {t['chunks_covered']} ({t['covered_share']:.0%})",
                  f"- pairs proposed: {t['proposed']}, kept: {t['kept']} ({t['kept_rows']} rows, one per phrasing)",
                  f"- teacher calls: {t['calls']} (+{t['cached']} from the cache, {t['retries']} retries after a reply "
                  f"that was not JSON); tokens: {t['prompt_tokens']:,} in, {t['completion_tokens']:,} out; {t['seconds']} s",
                  f"- chunks whose reply was not JSON: {t['chunks_malformed']}; with no pairs: {t['chunks_without_pairs']}"]
        if t["rejected"]:
            lines += ["", "| rejected because | pairs | example |", "|---|---|---|"]
            for why, n in sorted(t["rejected"].items(), key=lambda kv: -kv[1]):
                ex = (t["examples"].get(why) or [{}])[0]
                text = f"{(ex.get('questions') or ['?'])[0]} → {ex.get('answer', '')} (quote: {ex.get('quote', '')})"
                lines.append(f"| {why} | {n} | {text[:200].replace('|', '/')} |")
    if "text_rows" in report:
        lines += ["", f"{report['text_rows']} sections of the documents written as training text to "
                  f"`{report['text_out']}` (`--also-text`; pinned to the training split)."]
    return "\n".join(lines) + "\n"
