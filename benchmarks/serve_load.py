"""`ownllm serve` under load: many clients for a fixed time, some leaving early, some oversized, some slow.

    python benchmarks/serve_load.py [--model smollm2-135m] [--clients 16] [--slow 300] [--seconds 60] [--tokens 32]

Starts `ownllm serve MODEL` as its own process (so its memory is measured alone) with
--max-concurrency 4 --max-queue 4 (and the default connection limits: --header-timeout 10,
--body-timeout 30, --max-connections 500), then runs the clients on loopback. Client i does, in a
loop, kind i % 6: a streaming chat; a non-streaming chat; a stream it leaves after the first token; a
non-streaming request it gives up on after 0.5 s (often before its first byte, while it waits); a
body larger than the server's limit; a prompt longer than the model's context. With more clients
than slots plus queue, some requests get 429 and come back 0.2 s later. Beside them ``--slow``
connections trickle a byte a second (half their request head, half a body after a complete head)
and open again when the server closes them; a watcher asks /health every 0.1 s on a new connection and reads the
server's resident memory.

Prints: requests by outcome, p50/p95 time to first token (streams that got an answer), 429s,
other 4xx, 5xx, the slow connections the server closed and how long each had held on, the slots
still held when the clients stop and how long until all are free, /health p50/p95/max, and the
server's memory after warm-up and at its peak.
Targets (issues 18 and 40): 0 5xx; slots all free within 2 s of the last disconnect; /health p95 <
100 ms and every /health answered within 1 s; memory growth < 10 % over the run.
"""
from __future__ import annotations

import argparse
import collections
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

KINDS = ("stream", "plain", "stream-leave", "plain-leave", "oversized", "long-prompt")
QUESTIONS = ["What is the capital of France?", "How do I reset my password?", "Explain photosynthesis briefly.",
             "介绍一下长城。", "Write three tips for a job interview."]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Load:
    def __init__(self, url: str, model_id: str, tokens: int, oversized_bytes: int):
        self.url, self.model_id, self.tokens = url, model_id, tokens
        self.oversized = b'{"model": "x", "prompt": "' + b"x" * oversized_bytes + b'"}'
        self.outcomes: collections.Counter = collections.Counter()
        self.ttft: list[float] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.last_leave = 0.0

    def body(self, i: int, stream: bool) -> dict:
        return {"model": self.model_id, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": self.tokens, "temperature": 0, "stream": stream}

    def note(self, status: int | str, kind: str) -> None:
        with self.lock:
            self.outcomes[(kind, status)] += 1

    def client(self, i: int, until: float) -> None:
        import httpx

        kind = KINDS[i % len(KINDS)]
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while time.monotonic() < until:
                try:
                    status = self.once(http, kind, i)
                except httpx.ReadTimeout:  # the plain-leave client giving up: it closes its connection
                    with self.lock:
                        self.last_leave = time.monotonic()
                    status = "left"
                except httpx.HTTPError as e:
                    status = type(e).__name__
                self.note(status, kind)
                if status == 429:
                    time.sleep(0.2)
                elif kind in ("oversized", "long-prompt"):
                    time.sleep(1.0)

    def once(self, http, kind: str, i: int):
        if kind == "oversized":
            r = http.post("/v1/completions", content=self.oversized, headers={"Content-Type": "application/json"})
            return r.status_code
        if kind == "long-prompt":  # under the byte limit, past the model's context: a 400 naming the context
            r = http.post("/v1/completions", json={"model": self.model_id, "prompt": "word " * 20000,
                                                   "max_tokens": 4})
            return r.status_code
        if kind == "plain":
            r = http.post("/v1/chat/completions", json=self.body(i, False))
            if r.status_code >= 500:
                with self.lock:
                    self.errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
            return r.status_code
        if kind == "plain-leave":
            r = http.post("/v1/chat/completions", json=self.body(i, False), timeout=0.5)
            return r.status_code
        start, first = time.monotonic(), True
        with http.stream("POST", "/v1/chat/completions", json=self.body(i, True)) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return f"stream-error {chunk['error'].get('code')}"
                if first and chunk["choices"] and chunk["choices"][0].get("delta", {}).get("content"):
                    first = False
                    with self.lock:
                        self.ttft.append(time.monotonic() - start)
                    if kind == "stream-leave":
                        with self.lock:
                            self.last_leave = time.monotonic()
                        return "left"  # leaving the with-block closes the connection mid-stream
        return 200


class Slow:
    """``n`` connections that trickle a byte a second, half of them a request head, half a body after a whole
    head; each opens again when the server closes it. One thread, ``select`` over the sockets."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.closed_after: list[float] = []  # how long each connection the server closed had held on
        self.answers: collections.Counter = collections.Counter()
        self.stop = threading.Event()

    def _open(self, i: int):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setblocking(False)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        if i % 2:
            s.send(head + b"Content-Length: 100000\r\n\r\n")
            rest = b'{"model": "x", "messages": [' + b" " * 100000
        else:
            s.send(head)
            rest = b"X-Slow: " + b"a" * 100000
        return [s, rest, time.monotonic()]

    def run(self) -> None:
        import selectors  # epoll: select() stops at descriptor 1024

        conns, sel = {}, selectors.DefaultSelector()
        for i in range(self.n):
            conns[i] = self._open(i)
            sel.register(conns[i][0], selectors.EVENT_READ)
            time.sleep(0.005)
        while not self.stop.is_set():
            ready = {key.fileobj for key, _ in sel.select(1.0)}
            for i, c in list(conns.items()):
                if c[0] in ready:  # the server answered (408) or closed: count it and open another
                    sel.unregister(c[0])
                    try:
                        data = c[0].recv(4096)
                    except OSError:
                        data = b""
                    self.answers[data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"] += 1
                    self.closed_after.append(time.monotonic() - c[2])
                    c[0].close()
                    try:
                        conns[i] = self._open(i)
                    except OSError:  # refused: the server is out of descriptors
                        self.answers["refused"] += 1
                        conns.pop(i)
                        continue
                    sel.register(conns[i][0], selectors.EVENT_READ)
                    continue
                try:
                    c[0].send(c[1][:1])
                    c[1] = c[1][1:]
                except OSError:
                    pass
        for c in conns.values():
            c[0].close()


def _tail(log) -> str:
    log.seek(0)
    return log.read()[-3000:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--slow", type=int, default=300, help="connections trickling a byte a second (default 300)")
    ap.add_argument("--server-files", type=int, default=None,
                    help="the server's open-file limit (e.g. 1024, a common default; this process keeps its own)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()

    import httpx

    from ownllm.data.report import percentile  # nearest rank, of sorted values

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the server's log goes to a file: a pipe nobody reads fills, and the server blocks writing to it
    log = tempfile.TemporaryFile("w+")
    def limit_files():
        if args.server_files:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (args.server_files, args.server_files))

    server = subprocess.Popen([sys.executable, "-m", "ownllm", "serve", args.model, "--port", str(port),
                               "--max-concurrency", "4", "--max-queue", "4"],
                              stdout=subprocess.DEVNULL, stderr=log, text=True,
                              preexec_fn=limit_files)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None:
                    sys.exit("the server did not start:\n" + _tail(log))
                time.sleep(0.25)
        else:
            sys.exit("the server did not answer /health within 5 minutes")
        model_id = health["model"]
        load = Load(url, model_id, args.tokens, oversized_bytes=2 << 20)  # past the default 1 MiB limit
        # warm-up: as many generations at once as the server runs, so its buffers and threads exist
        warm = [threading.Thread(target=load.once, args=(httpx.Client(base_url=url, timeout=120), "stream", i))
                for i in range(4)]
        for w in warm:
            w.start()
        for w in warm:
            w.join()
        load.ttft.clear()
        rss_start = rss_mb(server.pid)
        health_ms, health_failed, rss, stop = [], [], [rss_start], threading.Event()

        def watch():  # a new connection each time, as a load balancer's health check opens one
            while not stop.is_set():
                t = time.monotonic()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # raw: no client overhead
                        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                        answer = b""
                        while chunk := s.recv(65536):
                            answer += chunk
                    if not answer.startswith(b"HTTP/1.1 200"):
                        raise OSError(answer[:12].decode(errors="replace") or "closed")
                    health_ms.append((time.monotonic() - t) * 1000)
                except OSError as e:  # not answered: counted, and the targets are not met
                    health_failed.append(str(e)[:40])
                    health_ms.append(float("inf"))
                rss.append(rss_mb(server.pid))
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        slow = Slow(port, args.slow)
        slow_thread = threading.Thread(target=slow.run, daemon=True)
        slow_thread.start()
        until = time.monotonic() + args.seconds
        clients = [threading.Thread(target=load.client, args=(i, until), daemon=True) for i in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        ended = time.monotonic()
        slow.stop.set()
        slow_thread.join()
        held = httpx.get(url + "/health", timeout=30).json()
        while True:  # how long until every slot is free again
            now = httpx.get(url + "/health", timeout=30).json()
            if not now["generating"] and not now["waiting"] or time.monotonic() - ended > 60:
                break
            time.sleep(0.02)
        freed = time.monotonic() - max(ended, load.last_leave)
        stop.set()
        watcher.join()
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            sys.exit("the server did not stop within 60 s of SIGTERM:\n" + _tail(log))

    by_status: collections.Counter = collections.Counter()
    for (kind, status), n in load.outcomes.items():
        by_status[status] += n
    total = sum(load.outcomes.values())
    fours = sum(n for s, n in by_status.items() if isinstance(s, int) and 400 <= s < 500 and s != 429)
    fives = sum(n for s, n in by_status.items() if isinstance(s, int) and s >= 500)
    print(f"{args.clients} clients and {args.slow} slow connections for {args.seconds:g} s against {model_id} (max-concurrency 4, max-queue 4), "
          f"{args.tokens} tokens an answer")
    print(f"requests: {total}; by kind and outcome: " + ", ".join(
        f"{kind} {status}: {n}" for (kind, status), n in sorted(load.outcomes.items(), key=str)))
    print(f"time to first token (streams): p50 {percentile(sorted(load.ttft), 0.5):.3f} s, p95 {percentile(sorted(load.ttft), 0.95):.3f} s"
          f" over {len(load.ttft)}")
    print(f"429: {by_status[429]}; other 4xx: {fours}; 5xx: {fives}" + (f" ({load.errors[:3]})" if load.errors else ""))
    closed = sorted(slow.closed_after)
    print(f"slow connections ({args.slow} open at once): the server closed {len(closed)} "
          f"({', '.join(f'{k}: {n}' for k, n in sorted(slow.answers.items()))}) after p50 "
          f"{percentile(closed, 0.5) if closed else float('nan'):.1f} s, max {max(closed) if closed else float('nan'):.1f} s")
    print(f"slots held when the clients stopped: {held['generating']} generating, {held['waiting']} waiting; "
          f"all free {freed:.2f} s after the last client left")
    print(f"/health: p50 {statistics.median(health_ms):.1f} ms, p95 {percentile(sorted(health_ms), 0.95):.1f} ms, "
          f"max {max(health_ms):.1f} ms over {len(health_ms)}"
          + (f"; {len(health_failed)} not answered ({collections.Counter(health_failed)})" if health_failed else ""))
    growth = (max(rss) - rss_start) / rss_start * 100
    print(f"server memory: {rss_start:.0f} MB after warm-up, peak {max(rss):.0f} MB ({growth:+.1f} %), "
          f"{rss[-1]:.0f} MB at the end; by quarter of the run: "
          + ", ".join(f"{rss[min(len(rss) - 1, q * len(rss) // 4)]:.0f}" for q in (1, 2, 3)) + " MB")
    ok = (fives == 0 and freed < 2 and percentile(sorted(health_ms), 0.95) < 100 and max(health_ms) < 1000
          and growth < 10)
    print("targets met" if ok else "targets NOT met (0 5xx, slots free < 2 s, /health p95 < 100 ms and max < 1 s, "
                                   "memory < +10 %)")


if __name__ == "__main__":
    main()
