"""What the studio reads from a run directory: training state, metrics, exports — the same files
the CLI writes, so runs made in a terminal and in the page look alike."""
from __future__ import annotations

import json
import os

from ownllm.rundir import complete_checkpoints, eval_metrics, read_json, run_config, trained_output
from ownllm.studio import jobs


def training_state(run_dir: str) -> dict:
    """running | stopped | finished | failed | died | not_started, from the job, status.json and the summary."""
    job = jobs.state(run_dir, "train")
    status = read_json(os.path.join(run_dir, "status.json"))
    summary = read_json(os.path.join(run_dir, "train_summary.json"))
    checkpoints = [os.path.basename(c) for c in complete_checkpoints(os.path.join(run_dir, "checkpoints"))]
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
    path = os.path.join(run_dir, "train_summary.json")
    return os.path.exists(path) and os.path.getmtime(path) >= job.get("started", 0) - 1


def read_metrics(run_dir: str, since: int = 0) -> list[dict]:
    rows = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= since and line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:  # a line being written right now
                        break
    except OSError:
        pass
    return rows


def exports_of(run_dir: str) -> list[dict]:
    folder = os.path.join(run_dir, "export")
    out = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        manifest = read_json(os.path.join(folder, name, "manifest.json"))
        if manifest is not None:
            out.append({"name": name, "manifest": manifest})
    return out


def run_view(run: str, name: str) -> dict:
    """Everything the page shows about one run."""
    report = read_json(os.path.join(run, "data", "report.json"))
    config = run_config(run) or None
    return {"name": name, "path": run, "report": report, "plan": read_json(os.path.join(run, "plan.json")),
            "config": config, "training": training_state(run),
            "eval": eval_metrics(run),
            "eval_job": jobs.state(run, "eval"), "export_job": jobs.state(run, "export"), "exports": exports_of(run),
            "adapter": trained_output(run) is not None}
