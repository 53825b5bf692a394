"""What a person says about the answers (issue 41, part 1): rows in RUN/feedback.jsonl from `ownllm chat`,
serve's /v1/feedback and the studio, appended whole under concurrency and never lost to a crash."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading

import pytest

from conftest import train_shop_run
from ownllm.data.feedback import Feedback, model_id, record
from ownllm.errors import DataError
from ownllm.utils import append_jsonl, read_appended_jsonl

ASKED = [{"role": "system", "content": "你是客服。"}, {"role": "user", "content": "周日开门吗？"}]


@pytest.fixture(scope="module")
def shop_run(tiny_model_dir, tmp_path_factory):
    """A run directory with a trained adapter (two steps: the weights only need to exist)."""
    return train_shop_run(tiny_model_dir, tmp_path_factory.mktemp("fb") / "shop", protect="off",
                          system="You answer for the shop.")


def _writer(path: str, who: int, n: int) -> None:
    for i in range(n):
        append_jsonl(path, {"who": who, "i": i, "text": "长" * (3000 + 97 * i)})  # past one write()'s buffer


def test_appends_from_threads_and_processes_stay_whole_and_a_cut_line_swallows_nothing(tmp_path):
    path = str(tmp_path / "feedback.jsonl")
    threads = [threading.Thread(target=_writer, args=(path, t, 25)) for t in range(4)]
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, 10 + p, 25)) for p in range(2)]
    for w in threads + procs:
        w.start()
    for w in threads + procs:
        w.join()
    rows, bad = read_appended_jsonl(path)
    assert bad == 0 and len(rows) == 150
    assert sorted((r["who"], r["i"]) for r in rows) == sorted((w, i) for w in (0, 1, 2, 3, 10, 11) for i in range(25))
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"who": 99, "i": 0, "text": "cut sh')  # a crash in the middle of a row
    append_jsonl(path, {"who": 7, "i": 0})
    rows, bad = read_appended_jsonl(path)
    assert bad == 1 and rows[-1] == {"who": 7, "i": 0} and len(rows) == 151


@pytest.mark.parametrize("change, message", [
    (dict(messages=[]), "needs 'messages'"),
    (dict(messages=[{"role": "user"}]), "message 0 is not"),
    (dict(messages=ASKED + [{"role": "assistant", "content": "是"}]), "end with the question"),
    (dict(label="meh"), "must be one of good, bad"),
    (dict(label=None), "a 'label' .* a 'better' answer"),
    (dict(label=None, better="   "), "'better' must be"),
    (dict(label=None, better="是的，周日开门。"), "the model's answer itself"),
    (dict(answer="长" * 100_001), "past the 100,000"),
])
def test_a_row_that_says_nothing_usable_is_refused_and_names_why(tmp_path, change, message):
    path = tmp_path / "feedback.jsonl"
    row = dict(messages=ASKED, answer="是的，周日开门。", label="good", **{})
    row.update(change)
    with pytest.raises(DataError, match=message):
        record(str(path), Feedback(**row))
    assert not path.exists()  # nothing half-written


def test_chat_commands_keep_feedback_in_the_run(shop_run):
    proc = subprocess.run([sys.executable, "-m", "ownllm", "chat", shop_run, "--max-new-tokens", "4",
                           "--temperature", "0", "--engine", "torch"],
                          input="/good\n周日开门吗？\n/bad\n/better\n/better 周日不开门。\nCode of item 3?\n/good\n/help\n/exit\n",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "no answer yet" in out and "/better TEXT" in out and "/help" in out and out.count("model> ") == 2
    rows = [json.loads(line) for line in open(os.path.join(shop_run, "feedback.jsonl"), encoding="utf-8")]
    assert [(r.get("label"), r.get("better")) for r in rows] == [("bad", None), (None, "周日不开门。"), ("good", None)]
    assert all(r["source"] == "chat" and r["model"] == model_id(shop_run) and r["model"].startswith("sha256:")
               for r in rows)
    # the question as asked; after /better the conversation goes on from the better answer
    assert rows[0]["messages"] == [{"role": "user", "content": "周日开门吗？"}]
    assert rows[2]["messages"][-3:] == [{"role": "user", "content": "周日开门吗？"},
                                        {"role": "assistant", "content": "周日不开门。"},
                                        {"role": "user", "content": "Code of item 3?"}]


def test_chat_with_a_model_that_is_no_run_says_where_feedback_would_go(tiny_model_dir, tmp_path):
    from ownllm.cli.models import _Feedback
    from ownllm.data.feedback import feedback_path

    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert "run directory" in _Feedback(tiny_model_dir, feedback_path(tiny_model_dir)).say(history, None, "good", "")
    given = str(tmp_path / "mine.jsonl")
    assert "saved as good" in _Feedback(tiny_model_dir, feedback_path(tiny_model_dir, given)).say(history, "sys",
                                                                                                   "good", "")
    row = json.loads(open(given, encoding="utf-8").read())
    assert row["model"] == tiny_model_dir and row["messages"][0] == {"role": "system", "content": "sys"}


def test_a_retrained_run_answers_under_another_model_id(shop_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shop_run, copy)
    assert model_id(str(copy)) == model_id(shop_run)  # the same weights, wherever they are
    weights = next(p for p in (copy / "adapter").iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_id(str(copy)) != model_id(shop_run)


def test_serve_feedback_route(tiny, tmp_path):
    from fastapi.testclient import TestClient

    from ownllm.serving.app import ServeSettings, create_app

    path = tmp_path / "feedback.jsonl"
    client = TestClient(create_app(tiny, ServeSettings(model_id="shop", api_key="k", feedback=str(path),
                                                       answering="sha256:abc")), base_url="http://127.0.0.1")
    auth = {"Authorization": "Bearer k"}
    body = {"messages": [{"role": "developer", "content": "你是客服。"}, {"role": "user", "content": "周日开门吗？"}],
            "answer": "是的。", "label": "bad", "better": "周日不开门。"}
    assert client.post("/v1/feedback", json=body).status_code == 401  # the same key as the rest of the API
    r = client.post("/v1/feedback", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["saved"], r.text
    row = json.loads(path.read_text(encoding="utf-8"))
    assert row["messages"][0]["role"] == "system" and row["model"] == "sha256:abc" and row["source"] == "serve"
    for bad, param in ((dict(body, label="great"), "label"), (dict(body, messages=body["messages"][:1]), "feedback"),
                       (dict(body, extra=1), "extra")):
        r = client.post("/v1/feedback", json=bad, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["message"], (bad, r.text)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1
    off = TestClient(create_app(tiny, ServeSettings(model_id="shop")), base_url="http://127.0.0.1")
    r = off.post("/v1/feedback", json=body)
    assert r.status_code == 404 and "--feedback FILE" in r.json()["error"]["message"]


def test_serve_keeps_feedback_in_the_run_it_serves(shop_run, monkeypatch):
    import ownllm.serving.app as serving

    seen = {}
    monkeypatch.setattr("ownllm.web.server.run_server", lambda app, host, port, limits: seen.update(app=app))
    serving.serve(shop_run, engine="torch", port=0)
    from fastapi.testclient import TestClient

    client = TestClient(seen["app"], base_url="http://127.0.0.1")
    r = client.post("/v1/feedback", json={"messages": [{"role": "user", "content": "hi"}], "answer": "x",
                                          "label": "good"})
    assert r.status_code == 200 and r.json()["model"] == model_id(shop_run)
    assert os.path.exists(os.path.join(shop_run, "feedback.jsonl"))


def test_studio_feedback_route(shop_run, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from ownllm.studio.app import Studio, create_app

    runs = tmp_path / "runs"
    shutil.copytree(shop_run, runs / "shop", ignore=shutil.ignore_patterns("feedback.jsonl"))
    client = TestClient(create_app(Studio(str(runs))), base_url="http://127.0.0.1")
    r = client.post("/api/runs/shop/feedback", json={"message": "Code of item 3?", "answer": "1021", "label": "good"})
    assert r.status_code == 200 and r.json()["rows"] == 1, r.text
    r = client.post("/api/runs/shop/feedback", json={"message": "Code of item 3?", "answer": "1021",
                                                     "better": "Item 3 has code 1021."})
    assert r.json()["rows"] == 2
    rows = [json.loads(line) for line in open(runs / "shop" / "feedback.jsonl", encoding="utf-8")]
    # the question as the chat asked it: the run's own system prompt first
    assert rows[0]["messages"] == [{"role": "system", "content": "You answer for the shop."},
                                   {"role": "user", "content": "Code of item 3?"}]
    assert rows[1]["better"] == "Item 3 has code 1021." and rows[1]["source"] == "studio"
    r = client.post("/api/runs/shop/feedback", json={"message": "Code?", "answer": "x"})
    assert r.status_code == 400 and "label" in r.json()["error"]["message"]
    (runs / "empty").mkdir()
    (runs / "empty" / "config.yaml").write_text("model: x\n")
    r = client.post("/api/runs/empty/feedback", json={"message": "Code?", "answer": "x", "label": "bad"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_trained"
