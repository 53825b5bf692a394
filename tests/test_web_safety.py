"""Both web servers against other websites, floods and slow clients (the shared guard in ownllm.web)."""
import concurrent.futures
import time

import pytest

from ownllm.web.common import Guard

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}


def _serve(tiny, base_url="http://127.0.0.1", **settings):
    from fastapi.testclient import TestClient

    from ownllm.serving.app import ServeSettings, create_app

    return TestClient(create_app(tiny, ServeSettings(model_id="tiny", **settings)), base_url=base_url,
                      raise_server_exceptions=False)


def _studio(tmp_path, base_url="http://127.0.0.1", **kw):
    from fastapi.testclient import TestClient

    from ownllm.studio.app import Studio, create_app

    studio = Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path / "mine")])
    return TestClient(create_app(studio, **kw), base_url=base_url, raise_server_exceptions=False)


def _openai_shaped(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_host_names_are_checked(tiny, tmp_path):
    guard = Guard(bound_host="127.0.0.1", allowed_hosts=("my.box",))
    for host in ("127.0.0.1:8000", "localhost:7860", "[::1]:8000", "192.168.1.5:8000", "my.box", "MY.BOX:80"):
        assert guard.host_allowed(host), host
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example", ""):
        assert not guard.host_allowed(host), host
    _openai_shaped(_serve(tiny, "http://evil.example:8000").get("/v1/models"), 421)
    assert "--allowed-host evil.example" in _serve(tiny, "http://evil.example").get("/").json()["error"]["message"]
    _openai_shaped(_studio(tmp_path, "http://evil.example:7860").get("/api/runs"), 421)
    assert _serve(tiny, "http://my.box", allowed_hosts=("my.box",)).get("/v1/models").status_code == 200
    assert _studio(tmp_path, "http://localhost:7860").get("/api/runs").status_code == 200


def test_cross_site_requests_cannot_change_state(tiny, tmp_path):
    studio, evil = _studio(tmp_path), {"Origin": "http://evil.example"}
    (tmp_path / "mine").mkdir()
    for method, path, kw in (("post", "/api/runs/x/stop", {}), ("post", "/api/runs/x/resume", {}),
                             ("post", "/api/runs", {"json": {"name": "x", "inputs": ["a.jsonl"]}}),
                             ("post", "/api/data/inspect", {"json": {"inputs": ["a.jsonl"]}}),
                             ("post", "/api/upload", {"content": b"{}", "headers": {"X-Filename": "a.jsonl"}})):
        r = getattr(studio, method)(path, **{**kw, "headers": {**kw.get("headers", {}), **evil}})
        _openai_shaped(r, 403)
        assert "another site" in r.json()["error"]["message"]
    # what a plain HTML form can send, from anywhere, without a custom header
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    _openai_shaped(studio.post("/api/runs/x/stop", content=b"a=1", headers=form), 415)
    _openai_shaped(_serve(tiny).post("/v1/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"}), 415)
    _openai_shaped(_serve(tiny).post("/v1/chat/completions", json=CHAT, headers=evil), 403)
    # the page's own requests still pass: same origin, and clients that send no Origin at all
    same = {"Origin": "http://127.0.0.1"}
    assert studio.post("/api/runs/x/stop", headers=same).status_code == 404  # past the guard: no run 'x'
    assert _serve(tiny).post("/v1/chat/completions", json=CHAT, headers=same).status_code == 200
    assert _serve(tiny).post("/v1/chat/completions", json=CHAT).status_code == 200


def test_studio_reads_files_only_under_its_roots(tmp_path):
    import json

    mine = tmp_path / "mine"
    mine.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(10)]
    (mine / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    secret = tmp_path / "secret.jsonl"
    secret.write_text((mine / "ok.jsonl").read_text())
    client = _studio(tmp_path)
    assert client.post("/api/data/inspect", json={"inputs": [str(mine / "ok.jsonl")]}).status_code == 200
    for path in (str(secret), "/etc/passwd", str(mine / ".." / "secret.jsonl")):
        r = client.post("/api/data/inspect", json={"inputs": [path]})
        _openai_shaped(r, 403)
        assert "--data-root" in r.json()["error"]["message"]
    r = client.post("/api/runs", json={"name": "s", "inputs": [str(secret)]})
    assert r.status_code == 403 and not (tmp_path / "runs" / "s").exists()
    (mine / "link.jsonl").symlink_to(secret)  # a link out of the root is outside it
    assert client.post("/api/data/inspect", json={"inputs": [str(mine / "link.jsonl")]}).status_code == 403
    r = client.post("/api/runs/none/plan", json={"model": str(tmp_path)})
    _openai_shaped(r, 403)


def test_oversized_body_is_refused_at_once_while_health_answers(tiny, live_server):
    import httpx

    with live_server(tiny, max_request_bytes=64 * 1024) as (url, app):
        big = b'{"model": "tiny", "prompt": "' + b"x" * (8 << 20) + b'"}'
        start = time.monotonic()
        r = httpx.post(url + "/v1/completions", content=big, headers={"Content-Type": "application/json"}, timeout=30)
        _openai_shaped(r, 413)
        assert time.monotonic() - start < 5
        # a chunked body (no Content-Length) is counted as it arrives
        r = httpx.post(url + "/v1/completions", content=iter([big[:40000], big[40000:90000]]),
                       headers={"Content-Type": "application/json"}, timeout=30)
        _openai_shaped(r, 413)
        assert httpx.get(url + "/health", timeout=5).status_code == 200


def test_a_non_streaming_client_that_leaves_frees_its_slot(tiny, live_server, slowed):
    import httpx

    body = {**CHAT, "max_tokens": 400}
    with slowed(tiny, 0.05), live_server(tiny, max_concurrency=1) as (url, app):
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.5 s and closes its connection
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5)
        left = time.monotonic()
        while app.state.queue.active and time.monotonic() - left < 10:
            time.sleep(0.05)
        # 400 tokens at 0.05 s each would hold the slot for 20 s
        assert app.state.queue.active == 0 and time.monotonic() - left < 2


def test_seeded_requests_are_reproducible_beside_each_other(tiny, live_server):
    import httpx

    def ask(seed):
        body = {**CHAT, "max_tokens": 12, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": seed}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    with live_server(tiny, max_concurrency=2) as (url, app):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = list(pool.map(ask, [7, 8]))
            second = list(pool.map(ask, [7, 8]))
        alone = ask(7)
    assert first == second and first[0] == alone
    assert first[0] != first[1]  # different seeds draw differently


@pytest.mark.parametrize("field,value", [("max_tokens", True), ("max_tokens", "5"), ("temperature", "0.5"),
                                         ("seed", 1.5), ("stream", "yes"), ("top_k", False)])
def test_numbers_and_booleans_are_strict(tiny, field, value):
    r = _serve(tiny).post("/v1/chat/completions", json={**CHAT, field: value})
    _openai_shaped(r, 400)
    assert r.json()["error"]["param"] == field


def test_every_error_answer_has_openais_shape(tiny, live_server, slowed):
    client = _serve(tiny, api_key="clé-秘密")
    auth = {"Authorization": "Bearer clé-秘密".encode()}  # a client sends the key's UTF-8 bytes
    _openai_shaped(client.post("/v1/chat/completions", json=CHAT), 401)
    assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200  # a non-ASCII key works
    _openai_shaped(client.get("/v1/nothing", headers=auth), 404)
    _openai_shaped(client.get("/v1/chat/completions", headers=auth), 405)
    _openai_shaped(client.post("/v1/chat/completions", content=b'{"model": "tiny", "x": "\xff\xfe"}',
                               headers={**auth, "Content-Type": "application/json"}), 400)
    _openai_shaped(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 0}, headers=auth), 400)
    _openai_shaped(_serve(tiny, "http://evil.example").get("/health"), 421)
    _openai_shaped(_serve(tiny, max_request_bytes=2048).post("/v1/completions", content=b"{" + b" " * 4096 + b"}",
                                                               headers={"Content-Type": "application/json"}), 413)
    import httpx

    with slowed(tiny, 0.05), live_server(tiny, max_concurrency=1, max_queue=0) as (url, app):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/chat/completions", json={**CHAT, "max_tokens": 30}, timeout=60)
            while not app.state.queue.active:
                time.sleep(0.01)
            _openai_shaped(httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=60), 429)
            assert pending.result().status_code == 200


def test_exposed_servers_warn(capsys):
    from ownllm.web.common import warn_if_exposed

    warn_if_exposed("0.0.0.0", None, "ownllm serve")
    assert "without --api-key" in capsys.readouterr().out
    warn_if_exposed("0.0.0.0", "key", "ownllm serve")
    warn_if_exposed("127.0.0.1", None, "ownllm serve")
    assert capsys.readouterr().out == ""


def _adapter_run(runs, tiny_model_dir, name="r"):
    """A run directory holding a LoRA adapter whose weights are not zero (so tuned answers differ)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(runs / name / "adapter")
    return runs / name


def test_studio_chat_goes_through_the_serving_engine(tmp_path, tiny_model_dir, serving, slowed):
    """The chat pair has the queue, timeout, token cap and disconnect handling that `serve` has."""
    import types

    import httpx

    from ownllm.studio.app import CHAT_MAX_TOKENS, Studio, create_app

    _adapter_run(tmp_path / "runs", tiny_model_dir)
    studio = Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path)])
    engine, ask = studio.chat_queue, {"message": "hi", "max_tokens": 4}
    with serving(create_app(studio)) as url:
        chat = url + "/api/runs/r/chat"
        r = httpx.post(chat, json=ask, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["base"] != body["tuned"] and set(body["finish"].values()) <= {"stop", "length"}
        _openai_shaped(httpx.post(chat, json={**ask, "max_tokens": CHAT_MAX_TOKENS + 1}, timeout=30), 400)
        network = types.SimpleNamespace(model=studio.chat_models["tuned"].model.get_base_model())
        with slowed(network, 0.05):
            with pytest.raises(httpx.ReadTimeout):  # a client that leaves frees the one slot at once
                httpx.post(chat, json={**ask, "max_tokens": 400}, timeout=0.5)
            left = time.monotonic()
            while engine.active and time.monotonic() - left < 10:
                time.sleep(0.05)
            assert engine.active == 0 and time.monotonic() - left < 2
            engine.max_queue = 0  # one generating, none may wait: the next gets 429
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(httpx.post, chat, json={**ask, "max_tokens": 20}, timeout=60)
                while not engine.active:
                    time.sleep(0.01)
                _openai_shaped(httpx.post(chat, json=ask, timeout=60), 429)
                assert pending.result().status_code == 200
            engine.request_timeout = 0.5  # both answers together are bounded by --request-timeout
            start = time.monotonic()
            r = httpx.post(chat, json={**ask, "max_tokens": 400}, timeout=60)
            _openai_shaped(r, 504)
            assert "--request-timeout" in r.json()["error"]["message"] and time.monotonic() - start < 5


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's malloc arenas")
@pytest.mark.parametrize("capped", [True, False])
def test_servers_cap_malloc_arenas(capped):
    """Generations run in new threads; without the cap each gets an arena that keeps its freed memory
    (benchmarks/serve_load.py: +13 % memory over two minutes of load, +2.7 % capped)."""
    import subprocess
    import sys

    code = ("import ctypes, threading\n"
            + ("from ownllm.web.generation_queue import limit_malloc_arenas\nlimit_malloc_arenas()\n" if capped else "")
            + "go = threading.Barrier(16)\n"
              "def work():\n    go.wait()\n    for _ in range(200):\n        x = [bytearray(300000) for _ in range(4)]\n"
              "ts = [threading.Thread(target=work) for _ in range(16)]\n"
              "[t.start() for t in ts]; [t.join() for t in ts]\n"
              "ctypes.CDLL('libc.so.6').malloc_stats()\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env).stderr
    arenas = sum(line.startswith("Arena ") for line in out.splitlines())
    assert (arenas <= 2) if capped else (arenas > 2), out[-500:]


# -- the second review (issue 40): each test performs the attack ------------------------------------------
def test_a_run_named_download_stays_behind_the_key(tmp_path):
    """`/api/runs/download` is the run "download", not the download route: the key is asked for."""
    studio = _studio(tmp_path, api_key="s3cret")
    _openai_shaped(studio.get("/api/runs/download"), 401)
    assert studio.get("/api/runs/download", headers={"Authorization": "Bearer s3cret"}).status_code == 404
    # the download route itself still checks its own token or the key in the route
    assert studio.get("/api/runs/x/download?path=eval/report.md").status_code in (401, 403, 404)


def test_malformed_headers_and_values_get_answers_in_the_apis_shape(tiny):
    serve = _serve(tiny)
    _openai_shaped(serve.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://["}), 403)
    r = serve.post("/v1/chat/completions", json={**CHAT, "seed": 2 ** 64})
    _openai_shaped(r, 400)
    assert r.json()["error"]["param"] == "seed"
    assert serve.post("/v1/chat/completions", json={**CHAT, "seed": 2 ** 64 - 1}).status_code == 200


def test_a_chat_template_that_refuses_the_messages_gives_a_400(tiny_model_dir):
    from ownllm.models.load import load_model

    own = load_model(tiny_model_dir, device="cpu")
    own.tokenizer.chat_template = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                                   "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
                                   "{% endif %}{{ m['content'] }}{% endfor %}")
    r = _serve(own).post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "a"},
                                                                           {"role": "user", "content": "b"}]})
    _openai_shaped(r, 400)
    assert "alternate" in r.json()["error"]["message"] and r.json()["error"]["param"] == "messages"


def test_the_operators_max_tokens_ceiling_and_a_full_queue_answered_before_tokenizing(tiny, monkeypatch):
    from ownllm.serving import app as serve_app

    capped = _serve(tiny, max_tokens=4)
    r = capped.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5})
    _openai_shaped(r, 400)
    assert "at most 4" in r.json()["error"]["message"]
    assert capped.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).status_code == 200
    full = _serve(tiny, max_concurrency=1, max_queue=0)
    full.app.state.queue.active = 1  # one generation running, no room to wait
    tokenized = []
    monkeypatch.setattr(serve_app, "_generation_kwargs", lambda *a, **k: tokenized.append(1))
    _openai_shaped(full.post("/v1/chat/completions", json=CHAT), 429)
    assert tokenized == []


def test_studio_inputs_named_like_options_stay_files(tmp_path, monkeypatch):
    """A file called --help (or --teacher=...) inside the roots reaches the from-docs job as a path after
    "--", resolved, never as an option."""
    from ownllm.studio import jobs

    started = []
    monkeypatch.setattr(jobs, "start", lambda folder, kind, argv, memory=None: started.append(argv) or {})
    (tmp_path / "mine").mkdir()
    for name in ("--help", "--teacher=http:"):
        (tmp_path / "mine" / name).write_text("# a page\n\nSome text.", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "mine")
    studio = _studio(tmp_path)
    studio.post("/api/docs", json={"inputs": ["--help", "--teacher=http:"]})
    argv = started[0]
    assert argv[argv.index("--") + 1:] == [str(tmp_path / "mine" / "--help"), str(tmp_path / "mine" / "--teacher=http:")]
    assert "--help" not in argv[:argv.index("--")]


def test_a_studio_on_the_network_makes_a_key_and_a_key_flag_is_warned_about(capsys):
    import argparse

    from ownllm.cli.web import warn_key_on_command_line
    from ownllm.studio.app import network_key

    assert network_key("127.0.0.1", None) == (None, None)
    assert network_key("0.0.0.0", "mine") == ("mine", None)
    key, made = network_key("0.0.0.0", None)
    assert key == made and len(key) >= 32
    warn_key_on_command_line(argparse.Namespace(api_key="s3cret"))
    assert "OWNLLM_API_KEY" in capsys.readouterr().err


def test_the_documents_step_uses_only_teachers_and_key_variables_named_at_start(tmp_path, monkeypatch):
    """A request cannot make the studio send the documents, or $ANY_SECRET as a bearer token, to a host of
    its choosing: teacher URLs and key variables come from the person who started it."""
    from fastapi.testclient import TestClient

    from ownllm.studio import jobs
    from ownllm.studio.app import Studio, create_app

    started = []
    monkeypatch.setattr(jobs, "start", lambda folder, kind, argv, memory=None: started.append(argv) or {})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.md").write_text("# A\n\nSome text.", encoding="utf-8")
    doc = str(tmp_path / "mine" / "a.md")

    def client(**named):
        studio = Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path / "mine")], **named)
        return TestClient(create_app(studio), base_url="http://127.0.0.1", raise_server_exceptions=False)

    r = client().post("/api/docs", json={"inputs": [doc], "teacher": "http://evil.example/v1"})
    _openai_shaped(r, 403)
    assert "--teacher http://evil.example/v1" in r.json()["error"]["message"]
    named = client(teachers=["http://localhost:11434/v1"], teacher_key_envs=["TEACHER_KEY"])
    r = named.post("/api/docs", json={"inputs": [doc], "teacher": "http://localhost:11434/v1",
                                      "teacher_key_env": "AWS_SECRET_ACCESS_KEY"})
    _openai_shaped(r, 403)
    assert r.json()["error"]["param"] == "teacher_key_env" and not started
    r = named.post("/api/docs", json={"inputs": [doc], "teacher": "http://localhost:11434/v1/",
                                      "teacher_key_env": "TEACHER_KEY"})
    assert r.status_code != 403, r.text  # (the job itself is not started here: 404 for its state)
    assert started and "--teacher" in started[0] and "TEACHER_KEY" in started[0]


def test_a_folder_whose_link_leads_out_of_the_roots_is_refused(tmp_path):
    import json

    (tmp_path / "mine" / "data").mkdir(parents=True)
    (tmp_path / "secret.jsonl").write_text(json.dumps({"prompt": "k", "completion": "secret"}) + "\n", encoding="utf-8")
    (tmp_path / "mine" / "data" / "ok.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n",
                                                         encoding="utf-8")
    (tmp_path / "mine" / "data" / "x.jsonl").symlink_to(tmp_path / "secret.jsonl")
    r = _studio(tmp_path).post("/api/data/inspect", json={"inputs": [str(tmp_path / "mine" / "data")]})
    _openai_shaped(r, 403)
    assert "x.jsonl links outside" in r.json()["error"]["message"]


def test_uploads_have_a_quota_and_old_ones_are_removed(tmp_path, monkeypatch):
    import os

    from ownllm.studio import app as studio_app

    monkeypatch.setattr(studio_app, "UPLOAD_FILES", 2)
    studio = _studio(tmp_path)

    def upload(name):
        return studio.post("/api/upload", content=b'{"prompt": "a", "completion": "b"}\n',
                           headers={"X-Filename": name, "Content-Type": "application/octet-stream"})

    first = upload("a.jsonl").json()["path"]
    assert upload("b.jsonl").status_code == 200
    _openai_shaped(upload("c.jsonl"), 507)  # two kept: the limit
    os.utime(first, (0, 0))  # a day old and more: removed when the next one arrives
    assert upload("c.jsonl").status_code == 200 and not os.path.exists(first)


def test_background_jobs_are_limited_across_runs(tmp_path, monkeypatch):
    from ownllm.studio import jobs

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.md").write_text("# A\n\nSome text.", encoding="utf-8")
    monkeypatch.setattr(jobs, "start", lambda *a, **kw: {})
    studio = _studio(tmp_path)
    docs = tmp_path / "runs" / ".docs"
    for job in ("j1", "j2"):
        (docs / job).mkdir(parents=True)
    monkeypatch.setattr(jobs, "state", lambda folder, kind: {"state": "running"} if kind == "docs" else None)
    r = studio.post("/api/docs", json={"inputs": [str(tmp_path / "mine" / "a.md")]})
    _openai_shaped(r, 429)
    assert "2 evaluation, export or documents jobs" in r.json()["error"]["message"]


# -- slow clients (issue 40, item 5): deadlines for a request's head and body, a connection cap ------------
def _limited_app(body_timeout: float):
    """A small app behind the servers' guard: /health, an echo of a JSON body, a streamed upload."""
    from fastapi import FastAPI, Request

    from ownllm.web.common import install_errors_and_guard

    app = FastAPI()
    install_errors_and_guard(app, Guard(max_body=1 << 16, upload_paths=("/upload",), body_timeout=body_timeout))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    @app.post("/upload")
    async def upload(request: Request):
        return {"bytes": sum([len(c) async for c in request.stream()])}

    return app


def _trickle(sock, data: bytes, every: float, until: float) -> bytes:
    """Send ``data`` a byte every ``every`` seconds until the server answers or closes; what it answered."""
    import select

    for i in range(len(data)):
        if time.monotonic() > until:
            break
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            break
        ready, _, _ = select.select([sock], [], [], every)
        if ready:
            break
    sock.settimeout(max(0.1, until - time.monotonic()))
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def test_a_trickled_head_or_body_is_answered_408_and_closed(serving):
    import socket

    from ownllm.web.settings import ConnectionLimits

    limits = ConnectionLimits(header_timeout=1.0, body_timeout=1.0)
    with serving(_limited_app(body_timeout=1.0), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n"
        cases = {"head": head + b"X-Pad: " + b"a" * 200,                    # never ends its headers
                 "body": head + b"\r\n" + b'{"a": "' + b"b" * 300,         # headers, then a trickled body
                 "silent": b""}                                             # connects and says nothing
        for name, data in cases.items():
            with socket.create_connection(("127.0.0.1", port)) as sock:
                t = time.monotonic()
                answer = _trickle(sock, data, 0.05, t + 8)
                took = time.monotonic() - t
                # before: uvicorn kept every one of these open for as long as the client went on (here 8 s+)
                assert answer.startswith(b"HTTP/1.1 408"), (name, answer[:200])
                assert b'"code": "request_timeout"' in answer or b'"code":"request_timeout"' in answer, answer
                assert took < 4, (name, took)
                sock.settimeout(2)
                assert sock.recv(1024) == b"", name  # and closed
        # an upload's pieces each have the deadline; a steady one passes, a stalled one gets the 408
        import httpx

        def pieces(stall):
            yield b"x" * 1000
            time.sleep(stall)
            yield b"y" * 1000

        ok = httpx.post(url + "/upload", content=pieces(0.2), timeout=10)
        assert ok.status_code == 200 and ok.json() == {"bytes": 2000}
        late = httpx.post(url + "/upload", content=pieces(3), timeout=10)
        assert late.status_code == 408 and late.json()["error"]["code"] == "request_timeout"
        assert httpx.post(url + "/echo", content=b"{\"a\": 1}", timeout=10).json() == {"bytes": 8}


def test_connection_cap_closes_the_longest_waiting_and_keeps_answering(serving):
    import socket

    import httpx

    from ownllm.web.settings import ConnectionLimits

    limits = ConnectionLimits(max_connections=10, header_timeout=30.0)
    with serving(_limited_app(body_timeout=30.0), limits) as url:
        port = int(url.rsplit(":", 1)[1])
        slow = []
        for i in range(25):  # two and a half times the cap of clients that open and send half a head
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(s)
            time.sleep(0.02)
        time.sleep(0.3)

        def closed(s):
            s.settimeout(0.05)
            try:
                return s.recv(1) == b""
            except socket.timeout:
                return False
            except OSError:
                return True

        state = [closed(s) for s in slow]
        # before: all 25 stayed open. Now at most the cap is open, the oldest closed first
        assert sum(not c for c in state) <= 10 and state[:10] == [True] * 10, state
        t = time.monotonic()
        assert httpx.get(url + "/health", timeout=5).status_code == 200 and time.monotonic() - t < 1
        for s in slow:
            s.close()
