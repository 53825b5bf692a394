"""Latency and throughput of `ownllm serve` with 1, 4 and 8 concurrent clients, per engine setting.

    python benchmarks/serve_latency.py [--model smollm2-135m] [--tokens 64] [--rounds 2] [--clients 1,4,8]

Each setting loads the model as `ownllm serve` does (ownllm.serving.engines.load_engine) and serves it
in this process on a free loopback port with ``--max-concurrency`` = the most clients; clients stream
greedy chat completions with httpx, as an OpenAI client would, all starting together. Settings:

- ``torch fp32, one generate per request``: what `serve` did before continuous batching (the baseline);
- ``torch fp32, batched``: the same model, concurrent requests sharing decode steps;
- ``auto``: `serve`'s default (the fastest verified engine here, batched).

Prints, per setting and client count: time to first token p50/p95, tokens/s per request (median) and
tokens/s in all (completion tokens of every request / wall time), and the aggregate at 4 clients
against one client alone (target ≥ 2×).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

QUESTIONS = ["Write a short story about a lighthouse keeper.", "Describe a busy market in the morning.",
             "Write a letter to a friend about your holiday.", "Explain how a bicycle works, step by step.",
             "写一段关于春天的短文。", "Tell me a story about a dragon who learns to cook.",
             "Describe your favourite city and why you like it.", "Write a poem about the sea."]


def one_request(url: str, model_id: str, tokens: int, question: str) -> tuple[float, float, int]:
    """(seconds to the first token, tokens/s after it, completion tokens) of one streamed chat completion."""
    import httpx

    body = {"model": model_id, "messages": [{"role": "user", "content": question}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start, first, usage = time.perf_counter(), None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return first - start, (usage - 1) / (end - first) if end > first else float("nan"), usage


def together(url: str, model_id: str, tokens: int, clients: int, offset: int) -> tuple[list, float]:
    results: list = []
    threads = [threading.Thread(target=lambda q=QUESTIONS[(offset + i) % len(QUESTIONS)]:
                                results.append(one_request(url, model_id, tokens, q))) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - began


def serve_in_thread(model, max_concurrency: int, batching: bool):
    import uvicorn

    from ownllm.serving.app import ServeSettings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServeSettings(model_id="m", max_concurrency=max_concurrency, batching=batching)
    server = uvicorn.Server(uvicorn.Config(create_app(model, settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def measure(name: str, model, args, batching: bool) -> dict:
    from ownllm.data.report import percentile

    server, url = serve_in_thread(model, max(args.clients), batching)
    one_request(url, "m", 4, QUESTIONS[0])  # warm-up
    aggregate = {}
    for clients in args.clients:
        ttft, rates, tokens, wall = [], [], 0, 0.0
        for r in range(args.rounds):
            results, seconds = together(url, "m", args.tokens, clients, offset=r)
            ttft += [x[0] for x in results]
            rates += [x[1] for x in results]
            tokens, wall = tokens + sum(x[2] for x in results), wall + seconds
        aggregate[clients] = tokens / wall
        print(f"{name:38s} {clients} client{'s' if clients > 1 else ' '}: time to first token p50 "
              f"{percentile(sorted(ttft), 0.5):.3f} s, p95 {percentile(sorted(ttft), 0.95):.3f} s; "
              f"{percentile(sorted(rates), 0.5):5.1f} tokens/s per request; {aggregate[clients]:6.1f} tokens/s in all",
              flush=True)
    server.should_exit = True
    if 1 in aggregate and 4 in aggregate:
        print(f"{name:38s} aggregate at 4 clients / 1 client: {aggregate[4] / aggregate[1]:.2f}x", flush=True)
    return aggregate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a model name, folder or run directory")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    args = ap.parse_args()

    from ownllm.serving.engines import describe, load_engine

    print(f"model {args.model}, {args.tokens} greedy tokens an answer, {args.rounds} rounds per client count")
    fp32, _ = load_engine(args.model, "torch", dtype="fp32")
    base = measure("torch fp32, one generate per request", fp32, args, batching=False)
    batched = measure("torch fp32, batched", fp32, args, batching=True)
    del fp32
    auto, record = load_engine(args.model, "auto")
    print(describe(record))
    best = measure(f"auto ({record['engine']}{' ' + record['dtype'] if record.get('dtype') else ''}), batched",
                   auto, args, batching=True)
    for clients in args.clients:
        print(f"{clients} client(s): batched torch {batched[clients] / base[clients]:.2f}x, auto "
              f"{best[clients] / base[clients]:.2f}x the baseline's tokens/s in all")


if __name__ == "__main__":
    main()
