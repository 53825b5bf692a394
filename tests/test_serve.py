"""`ownllm serve`: the official openai client against a live server on loopback, the invalid-request
battery, auth on every route, 429 under a burst, disconnects and timeouts, and the chat page in a
real browser (Debian's chromium driven by Playwright)."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from conftest import train_shop_run

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ARTIFACTS = os.path.join(os.path.dirname(__file__), "..", "test-artifacts")


def test_openai_client_chat_and_completions_streaming_and_not(engine_model, live_server):
    openai = pytest.importorskip("openai")
    with live_server(engine_model) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        assert [m.id for m in client.models.list().data] == ["tiny"]
        msgs = [{"role": "user", "content": "你好，请介绍一下自己。"}]
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
        text = r.choices[0].message.content
        assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 5
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert text == engine_model.chat(msgs, temperature=0, max_new_tokens=12)  # the served answer is the model's

        stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens

        c = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
        assert c.object == "text_completion" and c.choices[0].finish_reason == "length"
        assert c.usage.completion_tokens == 8
        streamed = "".join(x.choices[0].text for x in client.completions.create(
            model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True))
        assert streamed == c.choices[0].text

        seeded = [client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=1.0,
                                                 seed=7).choices[0].message.content for _ in range(2)]
        assert seeded[0] == seeded[1]

        stop = text[len(text) // 2:len(text) // 2 + 2].strip() or text[-1]  # a stop string inside the answer
        for streamed in (False, True):
            r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0, stop=[stop],
                                               stream=streamed)
            chunks = list(r) if streamed else None
            cut = "".join(c.choices[0].delta.content or "" for c in chunks) if streamed else r.choices[0].message.content
            finish = chunks[-1].choices[0].finish_reason if streamed else r.choices[0].finish_reason
            assert cut == text[:text.index(stop)] and finish == "stop"


def test_raw_sse_shape_ends_with_done(engine_model, live_server):
    import httpx

    with live_server(engine_model) as (url, _):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [line for line in r.iter_lines() if line]
        assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
        first = json.loads(events[0][6:])
        assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")


BAD_REQUESTS = [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": 600}, "max_tokens"),                 # prompt + 600 > the tiny model's 512 context
    ({"model": "gpt-4"}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"n": 2}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"chat_template": "{{ messages }}"}, "chat_template"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"seed": -1}, "seed"),
    ({"stream": "yes"}, "stream"),
]


@pytest.mark.parametrize("change,param", BAD_REQUESTS, ids=[p + str(i) for i, (_, p) in enumerate(BAD_REQUESTS)])
def test_invalid_requests_get_400_naming_the_field(engine_model, change, param):
    from fastapi.testclient import TestClient

    from ownllm.serving.app import ServeSettings, create_app

    client = TestClient(create_app(engine_model, ServeSettings(model_id="tiny")), base_url="http://127.0.0.1")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    if param == "max_tokens" and change["max_tokens"] == 600:
        assert "600" in err["message"] and "512" in err["message"]


def test_invalid_json_long_prompt_and_completion_errors(engine_model):
    from fastapi.testclient import TestClient

    from ownllm.serving.app import ServeSettings, create_app

    client = TestClient(create_app(engine_model, ServeSettings(model_id="tiny")), raise_server_exceptions=False, base_url="http://127.0.0.1")
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "word " * 600})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post("/v1/completions", json={"model": "tiny"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_api_key_guards_every_route_but_health_and_page(tiny):
    from fastapi.testclient import TestClient

    from ownllm.serving.app import ServeSettings, create_app

    client = TestClient(create_app(tiny, ServeSettings(model_id="tiny", api_key="s3cret")), base_url="http://127.0.0.1")
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    calls = [("get", "/v1/models", None), ("post", "/v1/chat/completions", chat),
             ("post", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})]
    for method, path, body in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = getattr(client, method)(path, json=body, headers=headers) if body else client.get(path, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, headers)
        ok = {"Authorization": "Bearer s3cret"}
        r = getattr(client, method)(path, json=body, headers=ok) if body else client.get(path, headers=ok)
        assert r.status_code == 200, (path, r.text)
    assert client.get("/health").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/chat.js").status_code == 200
    assert client.get("/static/app.py").status_code == 404
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert "access-control-allow-origin" not in client.options(
        "/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}).headers


def test_burst_past_the_queue_gets_429_with_retry_after(engine_model, live_server, slowed):
    import httpx

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
    with slowed(engine_model, 0.05), live_server(engine_model, max_concurrency=1, max_queue=1) as (url, app):
        results = []

        def call():
            results.append(httpx.post(url + "/v1/chat/completions", json=body, timeout=60))

        first = threading.Thread(target=call)
        first.start()
        while app.state.queue.active < 1:
            time.sleep(0.01)
        second = threading.Thread(target=call)
        second.start()
        while app.state.queue.waiting < 1:
            time.sleep(0.01)
        t = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 429 and r.headers["retry-after"] and time.monotonic() - t < 2
        assert r.json()["error"]["type"] == "rate_limit_error"
        first.join()
        second.join()
        assert [x.status_code for x in results] == [200, 200]


def test_disconnect_mid_stream_frees_the_slot(engine_model, live_server, slowed):
    import httpx

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "stream": True,
            "temperature": 0}
    with slowed(engine_model, 0.05), live_server(engine_model, max_concurrency=1) as (url, app):
        t = time.monotonic()
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            next(r.iter_lines())
        while app.state.queue.active and time.monotonic() - t < 10:
            time.sleep(0.05)
        # 400 tokens at 0.05 s each would hold the slot for 20 s; the disconnect freed it at once
        assert app.state.queue.active == 0 and time.monotonic() - t < 10
        r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_client_leaving_before_the_first_byte_frees_its_place(engine_model, live_server, slowed, stream):
    """A client that gives up while its request waits for a slot (nothing sent to it yet) leaves the queue at
    once: its place goes to the next client (no 429 from a queue of leavers) and it never takes a slot."""
    import httpx

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    with slowed(engine_model, 0.05), live_server(engine_model, max_concurrency=1, max_queue=1) as (url, app):
        holder = threading.Thread(target=lambda: httpx.post(url + "/v1/chat/completions",
                                                            json={**body, "max_tokens": 150}, timeout=60))
        holder.start()
        while app.state.queue.active < 1:
            time.sleep(0.01)
        with pytest.raises(httpx.ReadTimeout):  # the client leaves while it waits: not one byte came back
            httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 400, "stream": stream},
                       timeout=httpx.Timeout(60, read=0.3))
        t = time.monotonic()
        while app.state.queue.waiting and time.monotonic() - t < 5:
            time.sleep(0.02)
        assert app.state.queue.waiting == 0 and app.state.queue.active == 1  # the holder still generates
        r = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text  # the leaver's place in the queue was free
        holder.join()
        t = time.monotonic()
        while app.state.queue.active and time.monotonic() - t < 2:  # the slot is released as its thread ends
            time.sleep(0.02)
        assert app.state.queue.active == 0


def test_serve_keeps_its_connection_limits(tiny, live_server):
    """`serve`'s limits reach both the connections (a head's deadline) and its guard (a body's)."""
    import socket

    from ownllm.web.settings import ConnectionLimits

    with live_server(tiny, limits=ConnectionLimits(header_timeout=1.0, body_timeout=1.0)) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        for late in (b"", b"Content-Type: application/json\r\nContent-Length: 90\r\n\r\n{\"model\""):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + late)
                sock.settimeout(5)
                t = time.monotonic()
                answer = b""
                while chunk := sock.recv(65536):  # the answer, then the server closes
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
                assert time.monotonic() - t < 4


def test_request_timeout_ends_the_request(engine_model, live_server, slowed):
    import httpx

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300}
    with slowed(engine_model, 0.05), live_server(engine_model, request_timeout=0.5) as (url, app):
        t = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout" and time.monotonic() - t < 5
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            events = [e for e in r.iter_lines() if e]
        assert '"code": "timeout"' in events[-2] and events[-1] == "data: [DONE]"
        while app.state.queue.active:
            time.sleep(0.05)


def test_serve_cli_rejects_bad_flags():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ownllm", "serve", "smollm2-135m", "--port", "70000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--port" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ownllm", "serve", "no/such/model"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no/such/model" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ownllm", "serve", "smollm2-135m", "--header-timeout", "0",
                           "--max-connections", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--header-timeout" in proc.stderr and "--max-connections" in proc.stderr


def test_chat_page_in_a_real_browser(tiny, live_server, chromium):
    from playwright import sync_api

    browser_path = chromium
    injected = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    with live_server(tiny) as (url, _), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        sync_api.expect(page.locator("#model-name")).to_have_text("tiny")  # locators: the page's CSP forbids eval
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "10")
        page.fill("#input", "你好！" + injected)
        page.press("#input", "Enter")
        page.wait_for_selector("body[data-idle='1']", timeout=60000)
        answer = page.inner_text(".msg.assistant .content")
        expected = tiny.chat([{"role": "user", "content": "你好！" + injected}], temperature=0, top_p=0.9,
                             max_new_tokens=10)
        assert answer.strip() == expected.strip() and page.inner_text("#status") == "done 完成"
        assert page.inner_text(".msg.user .content") == "你好！" + injected  # shown as text
        page.screenshot(path=os.path.join(ARTIFACTS, "serve-chat.png"))

        # model output carrying markup: answered by a stub of the API route, so the text is known
        sse = "".join("data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]}) + "\n\n"
                      for piece in ["Here: ", injected[:20], injected[20:], " 完"]) + "data: [DONE]\n\n"
        page.route("**/v1/chat/completions", lambda route: route.fulfill(
            status=200, headers={"content-type": "text/event-stream"}, body=sse))
        page.fill("#input", "again")
        page.press("#input", "Enter")
        sync_api.expect(page.locator(".msg.assistant")).to_have_count(2)
        page.wait_for_selector("body[data-idle='1']")
        assert page.inner_text(".msg.assistant >> nth=1").endswith("Here: " + injected + " 完")
        assert page.evaluate("window.__xss") is None and page.locator(".msg img, .msg script").count() == 0
        page.screenshot(path=os.path.join(ARTIFACTS, "serve-chat-injection.png"))
        page.click("#reset")
        assert page.locator(".msg").count() == 0
        browser.close()


def test_serves_an_adapter_run_and_its_onnx_export_alike(tiny_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from ownllm.export.export import export
    from ownllm.models.load import load_model
    from ownllm.serving.app import ServeSettings, create_app, model_id_for
    run = tmp_path / "shop"
    train_shop_run(tiny_model_dir, run)
    export(str(run), "onnx")
    answers = []
    for source in (str(run), str(run / "export" / "onnx" / "model.onnx")):
        model_id = model_id_for(source)
        client = TestClient(create_app(load_model(source, device="cpu"), ServeSettings(model_id=model_id)), base_url="http://127.0.0.1")
        r = client.post("/v1/chat/completions", json={"model": model_id, "temperature": 0, "max_tokens": 8,
                                                      "messages": [{"role": "user", "content": "Code of item 3?"}]})
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0]["message"]["content"])
    assert [model_id_for(str(run)), model_id_for(str(run / "export" / "onnx" / "model.onnx"))] == ["shop", "shop-onnx"]
    assert answers[0] == answers[1]
