"""What the studio reads from a run directory: training state, metrics, exports — the same files
the CLI writes, so runs made in a terminal and in the page look alike."""
from __future__ import annotations

import json
import os

from ownllm.rundir import RunDir
from ownllm.studio import jobs
from ownllm.training.tune import trials_view


def training_state(run_dir: str) -> dict:
    """running | stopped | finished | failed | died | not_started, from the job, status.json and the summary."""
    run = RunDir(run_dir)
    job = jobs.state(run_dir, "train")
    status, summary = run.status(), run.summary()
    checkpoints = [os.path.basename(c) for c in run.complete_checkpoints()]
    out = {"job": job, "status": status, "summary": summary, "checkpoints": checkpoints}
    if job and job["state"] == "running":
        out["state"], out["pid"], out["own_session"] = "running", job["pid"], True
    elif status and status.get("state") == "training" and jobs.pid_alive(status.get("pid")):
        out["state"], out["pid"], out["own_session"] = "running", status["pid"], False  # started in a terminal
    elif job and job["state"] in ("failed", "stopped") and not summary_is_newer(run_dir, job):
        out["state"] = job["state"]
    elif summary and (not job or summary_is_newer(run_dir, job)):
        out["state"] = "stopped" if summary.get("stopped_because") == "interrupted" else "finished"
    elif job or (status and status.get("state") == "training"):
        out["state"] = "died"  # killed without a word (power cut, kill -9): the last checkpoint remains
    else:
        out["state"] = "not_started"
    out["resumable"] = out["state"] in ("stopped", "died", "failed") and bool(checkpoints)
    return out


def summary_is_newer(run_dir: str, job: dict) -> bool:
    path = RunDir(run_dir).summary_json
    return os.path.exists(path) and os.path.getmtime(path) >= job.get("started", 0) - 1


def read_metrics(run_dir: str, since: int = 0) -> list[dict]:
    rows = []
    try:
        with open(RunDir(run_dir).metrics_jsonl, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= since and line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:  # a line being written right now
                        break
    except OSError:
        pass
    return rows


def run_view(run: str, name: str) -> dict:
    """Everything the page shows about one run."""
    r = RunDir(run)
    return {"name": name, "path": run, "report": r.data_report(), "plan": r.plan(), "config": r.config() or None,
            "training": training_state(run), "eval": r.eval_metrics(),
            "eval_job": jobs.state(run, "eval"), "export_job": jobs.state(run, "export"),
            "exports": [{"name": n, "manifest": m} for n, m in r.exports()], "adapter": r.trained_output() is not None,
            "trials": trials_view(run)}
