"""`ownllm studio`: the API on real background jobs (start, live metrics, stop, resume, a restarted
server, a run started in a terminal), its guards, and the five steps walked in a real browser."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ARTIFACTS = os.path.join(os.path.dirname(__file__), "..", "test-artifacts")
MARKUP = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(tmp_path):
    """A failing test must not leave a training process behind (it would slow every later test)."""
    yield
    for record in tmp_path.glob("**/studio/*.json"):
        try:
            pid = json.loads(record.read_text()).get("pid")
            if pid and not record.name.endswith(".end.json"):
                os.killpg(pid, signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def support_csv(tmp_path):
    """A CSV whose Chinese column names the detector does not know: the page's column mapping fixes it."""
    path = tmp_path / "客服记录.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["客户提问", "标准回复"])
        for i in range(40):
            question = f"订单 {i} 的取件码是多少？" + (MARKUP if i % 10 == 0 else "")
            w.writerow([question, f"订单 {i} 的取件码是 {1000 + 7 * i}。"])
        w.writerow(["这一行没有回复", ""])
    return str(path)


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    from ownllm.studio.app import Studio, create_app

    return TestClient(create_app(Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path.parent)])), base_url="http://127.0.0.1")


def _wait(fn, timeout=600, every=0.3):  # generous: a busy CI machine can be 10x slower than usual
    end = time.time() + timeout
    while time.time() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def _new_run(client, name, data, **options):
    r = client.post("/api/runs", json={"name": name, "inputs": [data], **options})
    assert r.status_code == 200, r.text
    return r.json()


def _training(client, name):
    return client.get(f"/api/runs/{name}").json()["training"]


# -- API ---------------------------------------------------------------------------------------------
def test_data_report_column_mapping_and_run_creation(client, support_csv):
    r = client.post("/api/data/inspect", json={"inputs": [support_csv]})
    assert r.status_code == 400 and "客户提问" in r.json()["error"]["message"]  # names the columns it found
    mapped = {"inputs": [support_csv], "columns": "prompt=客户提问,response=标准回复"}
    report = client.post("/api/data/inspect", json=mapped).json()["report"]
    assert report["format"] == "prompt-completion" and report["total_rows"] == 41 and report["rejected_rows"] == 1
    hist = report["length_histogram"]
    assert sum(hist["counts"]) == report["kept_rows"] and len(hist["edges"]) == len(hist["counts"]) + 1
    assert any("⟦" in ex for ex in report["marked_examples"])
    view = _new_run(client, "客服", support_csv, columns="prompt=客户提问,response=标准回复")
    assert view["report"]["splits"]["train"] > 0 and view["training"]["state"] == "not_started"
    assert client.post("/api/runs", json={"name": "客服", "inputs": [support_csv]}).status_code == 409
    assert [r["name"] for r in client.get("/api/runs").json()["runs"]] == ["客服"]


def test_documents_become_the_data_of_a_new_run(client, tmp_path):
    import shutil

    docs = tmp_path / "docs"
    docs.mkdir()
    examples = os.path.join(os.path.dirname(__file__), "..", "examples", "docs")
    for name in ("handbook.docx", "policy_zh.html"):
        shutil.copy(os.path.join(examples, name), docs / name)
    assert client.post("/api/docs", json={"inputs": ["/etc"]}).status_code == 403
    assert client.post("/api/docs", json={"inputs": [str(docs)], "per_chunk": 0}).status_code == 400
    assert client.post("/api/docs", json={"inputs": [str(docs)], "judge": True}).status_code == 400  # no teacher
    assert client.get("/api/docs/0123456789ab").status_code == 404
    job = client.post("/api/docs", json={"inputs": [str(docs)], "also_text": True}).json()
    view = _wait(lambda: (v := client.get(f"/api/docs/{job['id']}").json())["job"]["state"] != "running" and v)
    assert view["job"]["state"] == "done", view["job"]["log_tail"]
    report = view["report"]
    assert report["extracted_pairs"] == 11 + 7 and report["rows"] == 18 and report["text_rows"] > 0
    assert [os.path.basename(p) for p in view["inputs"]] == ["docs.jsonl", "docs.text.jsonl"]
    assert view["inputs"][0].startswith(str(tmp_path / "runs" / ".docs" / job["id"]))
    run = _new_run(client, "手册", view["inputs"][0])
    assert sum(run["report"]["splits"].values()) == 18
    assert [r["name"] for r in client.get("/api/runs").json()["runs"]] == ["手册"]  # the job folder is no run


def test_plan_and_train_command_use_the_data_size_defaults(client, support_csv, tiny_model_dir):
    from ownllm.studio.app import TrainRequest, TuneRequest, train_argv

    run = _new_run(client, "p", support_csv, columns="prompt=客户提问,response=标准回复")["path"]
    plan = client.post("/api/runs/p/plan", json={"model": tiny_model_dir, "time_budget": "2h"}).json()
    assert plan["epochs"] == 10 and plan["fits_in_budget"] is True and "memory" in plan["text"]  # 32 rows: 10 epochs
    assert plan["recommendation"]["grad_accum"] == 1  # as training will: fewer than ~16 steps per epoch otherwise
    argv = train_argv(run, TrainRequest(model=tiny_model_dir, time_budget=None))
    assert "--epochs" not in argv and argv[:2] == ["train", "--data"]
    argv = train_argv(run, TrainRequest(model=tiny_model_dir, epochs=2, lr=5e-4, time_budget="30m"))
    assert argv[argv.index("--epochs") + 1] == "2" and argv[argv.index("--lr") + 1] == "0.0005"
    assert argv[argv.index("--time-budget") + 1] == "30m"
    # the plan step's "tune automatically" runs `ownllm tune` within the budget, or over a number of trials
    argv = train_argv(run, TuneRequest(model=tiny_model_dir, time_budget="30m"))
    assert argv[:2] == ["tune", "--data"] and argv[argv.index("--time-budget") + 1] == "30m"
    argv = train_argv(run, TuneRequest(model=tiny_model_dir, time_budget=None, trials=3))
    assert argv[argv.index("--trials") + 1] == "3" and "--time-budget" not in argv
    r = client.post("/api/runs/p/tune", json={"model": tiny_model_dir, "time_budget": None})
    assert r.status_code == 400 and "--time-budget (e.g. 30m) or --trials N" in r.json()["error"]["message"]


def test_guards_names_paths_uploads_and_api_key(tmp_path, support_csv):
    from fastapi.testclient import TestClient

    from ownllm.studio.app import Studio, create_app

    studio = Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path.parent)])
    client = TestClient(create_app(studio, api_key="s3cret"), base_url="http://127.0.0.1")
    assert client.get("/").status_code == 200 and client.get("/static/studio.js").status_code == 200
    assert client.get("/api/runs").status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/runs", headers=auth).status_code == 200
    for name in ("../etc", ".hidden", "a/b", ""):
        r = client.post("/api/runs", headers=auth, json={"name": name, "inputs": [support_csv]})
        assert r.status_code in (400, 404), (name, r.text)
    assert not os.path.exists(tmp_path / "etc")
    r = client.post("/api/data/inspect", headers=auth, json={"inputs": [str(tmp_path / "missing.jsonl")]})
    assert r.status_code == 400 and "missing.jsonl" in r.json()["error"]["message"]
    r = client.post("/api/upload", headers={**auth, "X-Filename": "..%2F..%2Fevil.jsonl"}, content=b'{"text": "x"}\n')
    assert r.status_code == 200 and os.path.dirname(r.json()["path"]) == studio.uploads
    assert r.json()["path"].endswith("-evil.jsonl")
    _new_run(TestClient(create_app(studio), base_url="http://127.0.0.1"), "r1", support_csv, columns="prompt=客户提问,response=标准回复")
    for path in ("../../客服记录.csv", "data/../../r1/config.yaml", "/etc/passwd"):
        assert client.get("/api/runs/r1/download", params={"path": path}, headers=auth).status_code == 404
    r = client.get("/api/runs/r1/download", params={"path": "data/report.json"}, headers=auth)
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    # the page downloads through a plain link: a one-file, one-use token instead of the key
    assert client.get("/api/runs/r1/download", params={"path": "data/report.json"}).status_code == 401
    assert client.post("/api/runs/r1/download-token", json={"path": "data/report.json"}).status_code == 401
    assert client.post("/api/runs/r1/download-token", headers=auth, json={"path": "/etc/passwd"}).status_code == 404
    link = client.post("/api/runs/r1/download-token", headers=auth, json={"path": "data/report.json"}).json()["url"]
    assert client.get(link.replace("report.json", "train.jsonl")).status_code == 401  # the token names one file
    assert client.get(link).status_code == 200 and client.get(link).status_code == 401  # and is used once
    r = client.post("/api/runs/r1/chat", headers=auth, json={"message": "hi"})
    assert r.json()["error"]["code"] == "not_trained"


def test_training_survives_a_server_restart_stops_and_resumes(tmp_path, tiny_model_dir, support_csv):
    """Start in one server; a new server process (a fresh Studio, no child handles) sees the job running,
    stops it (a checkpoint is saved) and resumes it to the end."""
    from fastapi.testclient import TestClient

    from ownllm.studio import jobs
    from ownllm.studio.app import Studio, create_app

    first = TestClient(create_app(Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path.parent)])), base_url="http://127.0.0.1")
    _new_run(first, "shop", support_csv, columns="prompt=客户提问,response=标准回复")
    r = first.post("/api/runs/shop/train", json={"model": tiny_model_dir, "time_budget": None, "max_steps": 120,
                                                  "logging_steps": 1, "save_steps": 50})
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    assert first.post("/api/runs/shop/train", json={"model": tiny_model_dir}).status_code == 409  # one at a time
    _wait(lambda: len(first.get("/api/runs/shop/metrics").json()["rows"]) >= 3)

    jobs._children.clear()  # what a restarted server knows: only what the run directory says
    second = TestClient(create_app(Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path.parent)])), base_url="http://127.0.0.1")
    t = _training(second, "shop")
    assert t["state"] == "running" and t["status"]["state"] == "training" and t["status"]["max_steps"] == 120
    assert second.post("/api/runs/shop/stop").status_code == 200
    t = _wait(lambda: (t := _training(second, "shop"))["state"] != "running" and t)
    assert t["state"] == "stopped" and t["resumable"] and t["summary"]["stopped_because"] == "interrupted", t
    stopped_at = t["summary"]["global_step"]
    assert f"checkpoint-{stopped_at}" in t["checkpoints"] and stopped_at < 120
    rows_before = len(second.get("/api/runs/shop/metrics").json()["rows"])

    assert second.post("/api/runs/shop/resume").status_code == 200
    t = _wait(lambda: (t := _training(second, "shop"))["state"] != "running" and t)
    assert t["state"] == "finished" and t["summary"]["global_step"] == 120, t
    rows = second.get("/api/runs/shop/metrics").json()["rows"]
    assert len(rows) > rows_before and rows[-1]["step"] > stopped_at
    status = t["status"]
    assert status["state"] == "ended" and status["step"] == 120 and status["memory_mb"]
    r = second.post("/api/runs/shop/train", json={"model": tiny_model_dir})
    assert r.status_code == 409 and r.json()["error"]["code"] == "trained"  # a fresh start would overwrite it


def test_a_failing_training_says_why(client, support_csv):
    _new_run(client, "bad", support_csv, columns="prompt=客户提问,response=标准回复")
    r = client.post("/api/runs/bad/train", json={"model": "no-such-model", "time_budget": "1h"})
    assert r.status_code == 200, r.text
    t = _wait(lambda: (t := _training(client, "bad"))["state"] != "running" and t)
    assert t["state"] == "failed" and t["job"]["rc"] == 2
    assert "unknown model 'no-such-model'" in t["job"]["log_tail"] and "Traceback" not in t["job"]["log_tail"]
    r = client.post("/api/runs/bad/train", json={"model": "smollm2-135m", "time_budget": "soon"})
    assert r.status_code == 400 and "time-budget" in r.json()["error"]["message"]


def test_feedback_from_the_chat_step_trains_a_preference_stage(client, support_csv, tiny_model_dir):
    _new_run(client, "shop", support_csv, columns="prompt=客户提问,response=标准回复")
    r = client.post("/api/runs/shop/learn", json={})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_trained", r.text
    r = client.post("/api/runs/shop/train", json={"model": tiny_model_dir, "time_budget": None, "max_steps": 2})
    assert r.status_code == 200, r.text
    t = _wait(lambda: (t := _training(client, "shop"))["state"] != "running" and t)
    assert t["state"] == "finished", t
    r = client.post("/api/runs/shop/learn", json={"method": "kto"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_feedback", r.text
    for i in range(4):
        said = {"label": "good"} if i % 2 else {"better": f"订单 {i} 的取件码是 {1000 + 7 * i}。祝您愉快！"}
        r = client.post("/api/runs/shop/feedback", json={"message": f"订单 {i} 的取件码是多少？", "answer": "不知道。", **said})
        assert r.status_code == 200, r.text
    from ownllm.data.feedback import judged_rows
    from ownllm.training.preference import default_method

    assert default_method(judged_rows(os.path.join(t["summary"]["run_dir"], "feedback.jsonl"))) == "orpo"
    assert default_method(judged_rows(os.path.join(t["summary"]["run_dir"], "feedback.jsonl"))[1:2]) == "kto"
    r = client.post("/api/runs/shop/learn", json={"method": "kto"})
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    t = _wait(lambda: (t := _training(client, "shop"))["state"] != "running" and t)
    assert t["state"] == "finished" and t["summary"]["method"] == "kto", t["job"].get("log_tail")
    p = t["summary"]["preference"]
    assert (p["pairs"], p["good"], p["bad"]) == (2, 2, 0) and p["examples"] == 6  # a pair: one good, one bad answer
    assert t["summary"]["continual"]["stage"] == 2
    r = client.post("/api/runs/shop/learn", json={})  # no method named: the best for feedback with pairs, ORPO
    assert r.status_code == 200 and r.json()["argv"][-2:] == ["--method", "orpo"], r.text
    t = _wait(lambda: (t := _training(client, "shop"))["state"] != "running" and t)
    assert t["state"] == "finished" and t["summary"]["method"] == "orpo", t["job"].get("log_tail")


def test_terminal_runs_show_up_and_a_foreign_training_blocks_a_second(tmp_path, tiny_model_dir, support_csv):
    from fastapi.testclient import TestClient

    from ownllm.studio.app import Studio, create_app
    from ownllm.training.trainer import Trainer

    runs = tmp_path / "runs"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
            for i in range(20)]
    Trainer(model=tiny_model_dir, train_dataset=rows, args={"output_dir": str(runs / "cli-run"), "max_steps": 3,
                                                            "precision": "fp32", "logging_steps": 1}).train()
    client = TestClient(create_app(Studio(str(runs), data_roots=[str(tmp_path.parent)])), base_url="http://127.0.0.1")
    assert {"name": "cli-run", "training": "finished"} in client.get("/api/runs").json()["runs"]
    assert [r["step"] for r in client.get("/api/runs/cli-run/metrics").json()["rows"] if "loss" in r] == [1, 2, 3]

    # a training started in a terminal: status.json names a live ownllm process
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ownllm-train"])
    try:
        status = json.loads((runs / "cli-run" / "status.json").read_text())
        (runs / "cli-run" / "status.json").write_text(json.dumps({**status, "state": "training", "pid": fake.pid}))
        t = _training(client, "cli-run")
        assert t["state"] == "running" and t["own_session"] is False
        _new_run(client, "other", support_csv, columns="prompt=客户提问,response=标准回复")
        r = client.post("/api/runs/other/train", json={"model": tiny_model_dir})
        assert r.status_code == 409 and "cli-run" in r.json()["error"]["message"]
        assert client.post("/api/runs/cli-run/stop").status_code == 200
        assert fake.wait(timeout=10) == -signal.SIGTERM  # the stop reached the terminal's process
        assert _training(client, "cli-run")["state"] in ("finished", "died")
    finally:
        fake.kill()


def test_vanished_job_is_reported_and_resumable(tmp_path, tiny_model_dir):
    from ownllm.studio import jobs
    from ownllm.studio.runs import training_state

    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-5" / "trainer_state.json").write_text("{}")  # written last: complete
    (run / "checkpoints" / "checkpoint-7").mkdir()  # a save cut short: not offered for resuming
    (run / "studio").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "studio" / "train.json").write_text(json.dumps({"kind": "train", "pid": dead.pid, "started": time.time()}))
    (run / "status.json").write_text(json.dumps({"state": "training", "pid": dead.pid}))
    assert jobs.state(str(run), "train")["state"] == "vanished"
    t = training_state(str(run))
    assert t["state"] == "died" and t["resumable"] and t["checkpoints"] == ["checkpoint-5"]


def test_studio_cli_flags():
    proc = subprocess.run([sys.executable, "-m", "ownllm", "studio", "--port", "0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--port" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ownllm", "studio", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--parallel-training" in proc.stdout


def test_the_trial_plot_draws_a_search_as_its_trials_finish(tmp_path, serving, chromium):
    """`ownllm tune`'s trials.jsonl (as a search writes it, one row per finished trial) in the training step: a
    point per scored trial, pruned ones hollow, the lowest score chosen while the search runs; hidden for a run
    trained again without tune."""
    from playwright.sync_api import expect, sync_playwright

    from ownllm.studio.app import Studio, create_app
    from ownllm.utils import append_jsonl

    run = tmp_path / "runs" / "tuning"
    (run / "tune").mkdir(parents=True)
    (run / "config.yaml").write_text("model: smollm2-135m\n")
    for n, state, score in [(0, "complete", 1.25), (1, "pruned", 2.5), (2, "complete", 0.75)]:
        append_jsonl(str(run / "tune" / "trials.jsonl"), {
            "number": n, "params": {"lr": 1e-3 * (n + 1), "lora_r": 64}, "state": state, "score": score,
            "val_loss": score, "general_drift": 0.0, "steps": 30, "seconds": 12.0, "stopped_because": state})
    with serving(create_app(Studio(str(tmp_path / "runs")))) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(locale="en-US")
        page.goto(url + "/")
        page.select_option("#run-select", "tuning")
        page.click("[data-step=train]")
        expect(page.locator("#trial-chart")).to_have_attribute("data-trials", "3")
        expect(page.locator("#trials-box")).to_be_visible()
        assert page.locator("#trial-chart circle").count() == 3
        assert page.locator("#trial-chart circle.pruned").count() == 1
        best = page.locator("#trial-chart circle.best")
        assert best.count() == 1 and best.locator("title").text_content().startswith("#2 lr 0.003")
        expect(page.locator("#trials-note")).to_contain_text("3 trials · chosen: trial 2")
        page.screenshot(path=os.path.join(ARTIFACTS, "studio-trials.png"), full_page=True)
        (run / "train_summary.json").write_text(json.dumps({"method": "lora"}))  # trained again, not by tune
        expect(page.locator("#trials-box")).to_be_hidden(timeout=15000)
        browser.close()


# -- the browser walk ----------------------------------------------------------------------------------
def test_studio_five_steps_in_a_real_browser(tmp_path, tiny_model_dir, support_csv, serving, chromium):
    from playwright.sync_api import expect, sync_playwright

    from ownllm.studio.app import Studio, create_app

    runs = tmp_path / "runs"
    shot = lambda page, name: page.screenshot(path=os.path.join(ARTIFACTS, f"studio-{name}.png"), full_page=True)  # noqa: E731
    with serving(create_app(Studio(str(runs), data_roots=[str(tmp_path.parent)]))) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900}, locale="en-US")
        page.goto(url + "/")
        expect(page.locator("#method option")).to_have_count(5)

        # 1. data from documents: uploaded, turned into rows by a background job, shown, and made the inputs
        docs = os.path.join(os.path.dirname(__file__), "..", "examples", "docs")
        page.click("#docs-box summary")
        page.set_input_files("#docs-files", [os.path.join(docs, "handbook.docx"), os.path.join(docs, "policy_zh.html")])
        page.click("#docs-start")
        expect(page.locator("#docs-report")).to_contain_text("18 / 18", timeout=120000)  # rows / facts
        expect(page.locator("#docs-report")).to_contain_text("docs.jsonl")
        page.click("#inspect")
        expect(page.locator("#report-counts")).to_contain_text("18", timeout=60000)  # the first click starts the data doctor's worker
        shot(page, "1-documents")
        page.click("#docs-box summary")
        expect(page.locator("#run-name")).to_have_value(re.compile(r"docs-[0-9a-f]{6}"))
        page.fill("#run-name", "")  # the next upload names the run again

        # 1. data: upload, the detector cannot map these columns, the mapping fixes it; then the run
        page.set_input_files("#file", support_csv)
        expect(page.locator("#run-name")).to_have_value("客服记录")
        page.click("#inspect")
        expect(page.locator("#error")).to_contain_text("客户提问")
        page.fill("#columns", "prompt=客户提问,response=标准回复")
        page.click("#inspect")
        expect(page.locator("#report-format")).to_contain_text("prompt-completion")
        expect(page.locator("#report-rejected")).to_contain_text("1")
        assert page.locator("#histogram rect").count() == 20
        assert page.locator("#report-examples span.trained").count() >= 1
        page.fill("#run-name", "客服")
        page.click("#create-run")
        expect(page.locator("#run-select")).to_have_value("客服")
        shot(page, "1-data")

        # 2. model, method and budget: the plan before anything starts
        page.click("[data-step=plan]")
        expect(page.locator("#model option", has_text="smollm2-135m")).to_have_count(1)
        page.fill("#model-path", tiny_model_dir)
        page.fill("#budget", "10m")
        page.click("#plan")
        expect(page.locator("#plan-table")).to_contain_text("GB")
        page.click("#step-plan details summary")
        page.fill("#max-steps", "200")
        page.fill("#logging-steps", "1")
        page.fill("#save-steps", "50")
        shot(page, "2-plan")

        # 3. train: the curve grows live; stop keeps a checkpoint; resume carries on to the end
        page.click("[data-step=train]")
        page.click("#train")
        expect(page.locator("#train-state")).to_have_attribute("data-state", "running", timeout=120000)
        points = lambda: int(page.get_attribute("#loss-chart", "data-train-points") or 0)  # noqa: E731 (the CSP forbids eval)
        first = _wait(lambda: points() >= 3 and points())
        _wait(lambda: points() > first)
        expect(page.locator("#train-progress")).to_contain_text("/ 200")
        shot(page, "3-training")
        page.click("#stop")
        expect(page.locator("#train-state")).to_have_attribute("data-state", "stopped", timeout=300000)
        stopped_points = points()
        expect(page.locator("#resume")).to_be_enabled()
        page.click("#resume")
        expect(page.locator("#train-state")).to_have_attribute("data-state", "finished", timeout=600000)
        assert points() > stopped_points
        expect(page.locator("#train-progress")).to_contain_text("200 / 200")
        shot(page, "3-trained")

        # 4. report card, then both models answer; markup from a person or a model stays text
        page.click("[data-step=report]")
        page.click("#evaluate")
        expect(page.locator("#headline")).to_contain_text("held-out", timeout=600000)
        expect(page.locator("#eval-table tr")).not_to_have_count(0)
        with page.expect_download() as report:
            page.click("#full-report")
        assert report.value.suggested_filename == "report.html"
        page.fill("#chat-input", "订单 3 的取件码是多少？" + MARKUP)
        page.click("#chat-send")
        expect(page.locator(".pair.answered")).to_have_count(1, timeout=300000)
        assert page.inner_text(".pair .question") == "订单 3 的取件码是多少？" + MARKUP
        page.click(".pair .feedback button >> text=👍")  # the person's word on the answer: a row to learn from
        expect(page.locator(".pair .feedback")).to_contain_text("(1 ")
        page.route("**/api/runs/*/chat", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps({"base": "基础 " + MARKUP, "tuned": MARKUP})))
        page.fill("#chat-input", "again")
        page.click("#chat-send")
        expect(page.locator(".pair.answered")).to_have_count(2)
        assert page.inner_text(".pair .answer.tuned >> nth=0").endswith(MARKUP)
        page.click(".pair >> nth=0 >> .feedback button >> text=👎")  # a bad answer opens the box for a better one
        page.fill(".pair >> nth=0 >> .feedback textarea", "取件码是 1021。")
        page.click(".pair >> nth=0 >> .feedback button >> nth=3")
        expect(page.locator(".pair >> nth=0 >> .feedback")).to_contain_text("(3 ")
        said = [json.loads(line) for line in open(runs / "客服" / "feedback.jsonl", encoding="utf-8")]
        assert [(r["label"] if "label" in r else r["better"]) for r in said] == ["good", "bad", "取件码是 1021。"]
        assert said[0]["messages"][-1]["content"] == "订单 3 的取件码是多少？" + MARKUP and said[1]["answer"] == MARKUP
        assert page.evaluate("window.__xss") is None and page.locator("main img, main script").count() == 0
        shot(page, "4-report-chat")

        # 5. export merged, see its checks, download a file
        page.click("[data-step=export]")
        page.select_option("#export-format", "merged")
        page.click("#export")
        card = page.locator(".export-card[data-name=merged]")
        expect(card).to_be_visible(timeout=600000)
        assert card.locator("tr.bad").count() == 0 and card.locator("tr.ok").count() >= 1
        with page.expect_download() as download:
            card.locator("li[data-file='config.json'] button").click()
        saved = tmp_path / "downloaded.json"
        download.value.save_as(saved)
        assert saved.read_bytes() == (runs / "客服" / "export" / "merged" / "config.json").read_bytes()
        shot(page, "5-export")

        # the language switch: every label, and the state words made in the script
        page.click("#lang")
        expect(page.locator("[data-step=data]")).to_have_text("1 · 数据")
        page.click("[data-step=train]")
        expect(page.locator("#train-state")).to_have_text("已完成")
        expect(page.locator("#train")).to_have_text("开始训练")
        shot(page, "zh-train")
        page.click("[data-step=report]")
        expect(page.locator("#eval-table")).to_contain_text("词元 F1")
        expect(page.locator(".answer.tuned").first).to_have_attribute("data-label", "微调后")
        shot(page, "zh-report")
        page.click("#lang")
        expect(page.locator("#train")).to_have_text("Start training")
        assert page.evaluate("window.__xss") is None
        browser.close()


def test_every_label_has_a_chinese_translation():
    import re

    static = os.path.join(os.path.dirname(__file__), "..", "ownllm", "studio", "static")
    html = open(os.path.join(static, "index.html"), encoding="utf-8").read()
    js = open(os.path.join(static, "studio.js"), encoding="utf-8").read()
    zh_block = js[js.index("zh: {"):js.index("\n  },\n};")]
    zh = set(re.findall(r"(\w+):", zh_block))
    en_block = js[js.index("Object.assign(EN, {"):]
    en = set(re.findall(r"(\w+):", en_block[:en_block.index("});")]))
    in_page = set(re.findall(r'data-i18n="(\w+)"', html))
    metrics = js[js.index("const METRICS"):js.index("];", js.index("const METRICS"))]
    in_script = set(re.findall(r'T\("(\w+)"\)', js)) | {f"m_{m}" for m in re.findall(r'"(\w+)"', metrics)}
    in_script |= {"running", "stopped", "finished", "failed", "died", "not_started"}  # T(state) in the script
    assert in_page and in_script
    assert not (in_page | in_script) - zh, "labels without a Chinese text"
    assert not in_script - en - in_page, "script texts without an English text"


def test_work_past_the_memory_limit_stops_with_a_sentence(tmp_path, support_csv):
    """Data preparation runs outside the server and, like every job, is stopped past --job-memory with a
    message naming the limit; under the limit both work as before."""
    from fastapi.testclient import TestClient

    from ownllm.studio import jobs
    from ownllm.studio.app import Studio, create_app
    def own_rss():  # this process alone (the worker is its child)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    tight = Studio(str(tmp_path / "runs"), data_roots=[str(tmp_path.parent)], job_memory=60 << 20)
    before = own_rss()
    client = TestClient(create_app(tight), base_url="http://127.0.0.1")
    mapped = {"inputs": [support_csv], "columns": "prompt=客户提问,response=标准回复"}
    r = client.post("/api/data/inspect", json=mapped)
    assert r.status_code == 507 and r.json()["error"]["code"] == "memory_limit", r.text
    assert "0.1 GB" in r.json()["error"]["message"] and "--job-memory" in r.json()["error"]["message"]
    tight.preparer.memory = None  # the next request starts a new worker, which is kept warm
    reports = [client.post("/api/data/inspect", json=mapped) for _ in range(2)]
    worker = tight.preparer._proc
    assert [r.status_code for r in reports] == [200, 200] and reports[0].json()["report"]["kept_rows"] == 40
    assert worker.poll() is None and client.post("/api/data/inspect", json=mapped).status_code == 200
    assert tight.preparer._proc is worker  # one worker for both: its tokenizer stays loaded
    # a person's mistake comes back from the worker as the same 400
    missing = client.post("/api/data/inspect", json={"inputs": [str(tmp_path / "missing.jsonl")]})
    assert missing.status_code == 400 and "missing.jsonl" in missing.json()["error"]["message"]
    # the file was read in the worker: the server did not load a tokenizer for it
    assert own_rss() - before < 100 << 20
    tight.preparer.close()

    run = str(tmp_path / "runs" / "r")
    os.makedirs(run)
    for memory, expected in ((60 << 20, "failed"), (None, "done")):
        jobs.start(run, "eval", ["data", "inspect", support_csv, "--columns", "prompt=客户提问,response=标准回复"],
                   memory=memory)
        for _ in range(600):
            state = jobs.state(run, "eval")
            if state["state"] != "running":
                break
            time.sleep(0.1)
        assert state["state"] == expected, state
        if expected == "failed":
            assert "--job-memory" in state["reason"] and "--job-memory" in state["log_tail"]
        else:
            assert "reason" not in state
