"""Latency of `ownllm serve`: time to first token and tokens/s, one client and four concurrent clients.

    python benchmarks/serve_latency.py [--model smollm2-135m] [--tokens 64] [--rounds 3]

Starts the server in this process on a free loopback port, then streams chat completions with
httpx, as an OpenAI client would; greedy decoding so every run generates the same tokens.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _args import generation_args  # noqa: E402 (benchmarks/, the script's own folder)


def one_request(url: str, model_id: str, tokens: int, question: str) -> tuple[float, float, int]:
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
    return first - start, usage / (end - first) if end > first else float("nan"), usage


def main() -> None:
    args = generation_args(__doc__)

    import uvicorn

    from ownllm.models.load import load_model
    from ownllm.serving.app import ServeSettings, create_app, model_id_for

    model = load_model(args.model, device="cpu")
    model_id = model_id_for(args.model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model, ServeSettings(model_id=model_id)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    questions = ["What is the capital of France?", "How do I reset my password?", "Explain photosynthesis briefly.",
                 "介绍一下长城。"]
    one_request(url, model_id, 4, questions[0])  # warm-up
    single = [one_request(url, model_id, args.tokens, questions[i % 4]) for i in range(args.rounds)]
    print(f"1 client : time to first token {statistics.median(r[0] for r in single):.3f} s (median of "
          f"{args.rounds}), {statistics.median(r[1] for r in single):.1f} tokens/s per request")
    results: list = []
    t = time.perf_counter()
    threads = [threading.Thread(target=lambda q=q: results.append(one_request(url, model_id, args.tokens, q)))
               for q in questions]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    total = sum(r[2] for r in results)
    print(f"4 clients: time to first token {statistics.median(r[0] for r in results):.3f} s (median), "
          f"{statistics.median(r[1] for r in results):.1f} tokens/s per request, {total / wall:.1f} tokens/s in all")
    server.should_exit = True


if __name__ == "__main__":
    main()
