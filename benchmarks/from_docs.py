"""Documents → data, measured on the sample documents (examples/docs, written by make_docs.py).

    .venv/bin/python benchmarks/from_docs.py            # extraction + the embedded model as teacher
    .venv/bin/python benchmarks/from_docs.py --train    # … then prepare, train and the report card

Prints: extraction precision and recall against the FAQ pairs the script knows (targets 1.0 / ≥ 0.95);
with SmolLM2-135M-Instruct as teacher through `ownllm serve`: chunks, pairs proposed, kept, the share of
kept pairs whose quote is in the source (target 100%), calls and time; with --train, the whole path from
documents to a before/after report card and its time.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OWNLLM = [sys.executable, "-m", "ownllm"]


def extraction(docs: str) -> None:
    from ownllm.data.documents import read_document
    from ownllm.data.faq import extract_pairs

    truth = json.load(open(os.path.join(docs, "faq_truth.json"), encoding="utf-8"))
    tp = found = expected = 0
    for name, pairs in truth.items():
        got = {(p.question, p.answer) for p in extract_pairs(read_document(os.path.join(docs, name)))}
        want = {(p["question"], p["answer"]) for p in pairs}
        tp, found, expected = tp + len(got & want), found + len(got), expected + len(want)
        print(f"  {name}: {len(got & want)}/{len(want)} found, {len(got - want)} extra")
    print(f"extraction: precision {tp / found:.3f}, recall {tp / expected:.3f} ({tp} of {expected} FAQ pairs)")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_teacher(docs: str, out: str) -> dict:
    import httpx

    from ownllm.data.documents import document_text, read_document
    from ownllm.data.from_docs import docs_to_data
    from ownllm.data.synthesis import TeacherError, normalise

    port = _port()
    # a 768-token reply from four batched requests can outlast serve's default 120 s request timeout
    server = subprocess.Popen(OWNLLM + ["serve", "smollm2-135m", "--port", str(port), "--request-timeout", "900"],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        began = time.time()
        try:
            report = docs_to_data([docs], out, teacher=url, concurrency=4, cache=False, progress=False)
        except TeacherError as e:
            print(f"teacher: {e}")
            report = json.load(open(out[:-len(".jsonl")] + ".report.json", encoding="utf-8"))
        seconds = time.time() - began
    finally:
        server.terminate()
        server.wait(timeout=30)
    t = report["teacher"]
    texts = {os.path.basename(d["file"]): normalise(document_text(read_document(d["file"]))) for d in report["documents"]}
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    taught = [r for r in rows if r["origin"] == "teacher"]
    grounded = sum(normalise(r["quote"]) in texts[r["source"].split(" ")[0]] for r in taught)
    print(f"teacher (SmolLM2-135M-Instruct via ownllm serve): {t['chunks']} chunks, {t['proposed']} pairs proposed, "
          f"{t['kept']} kept ({t['kept_rows']} rows); rejected {t['rejected']}; replies not JSON "
          f"{t['chunks_malformed']}; kept quotes found in the source: "
          f"{grounded}/{len(taught)}{f' ({grounded / len(taught):.0%})' if taught else ''}; "
          f"{t['calls']} calls, {t['completion_tokens']} tokens out, {seconds:.0f} s")
    return report


def train(out: str, work: str) -> None:
    began = time.time()
    run = os.path.join(work, "run")
    inputs = [out] + ([out[:-len(".jsonl")] + ".text.jsonl"] if os.path.exists(out[:-len(".jsonl")] + ".text.jsonl")
                      else [])
    subprocess.run(OWNLLM + ["data", "prepare", *inputs, "--out", run], check=True)
    subprocess.run(OWNLLM + ["quickstart", "--data", run, "--out", run], check=True)
    card = json.load(open(os.path.join(run, "eval", "metrics.json"), encoding="utf-8"))
    print(f"documents → report card: {time.time() - began:.0f} s; headline: {card.get('headline')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", default=os.path.join(ROOT, "examples", "docs"))
    ap.add_argument("--train", action="store_true", help="also prepare, train and evaluate (minutes)")
    args = ap.parse_args()
    extraction(args.docs)
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "docs.jsonl")
        with_teacher(args.docs, out)
        if args.train:
            train(out, work)


if __name__ == "__main__":
    main()
