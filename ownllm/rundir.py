"""Reading a run directory: the one place that knows its layout.

``runs/NAME/`` holds ``config.yaml`` (what was asked), ``data/`` (the prepared splits and their
report), ``checkpoints/``, the result (``adapter/`` or ``model/``), a continual run's earlier stages
(``stages/N/``, each laid out the same) and the rest (see README).
Every package that needs to know what a run holds asks here; none of it loads a model.
"""
from __future__ import annotations

import json
import os

from ownllm.errors import DataError


def is_run_dir(path: str) -> bool:
    """True for a run directory: it has a config, prepared data or a training status."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, p))
                                       for p in ("config.yaml", "data", "status.json"))


def run_dir_of(name) -> str | None:
    """``name`` when it is a run directory, else None (an alias, a model folder, a file)."""
    return os.fspath(name) if isinstance(name, (str, os.PathLike)) and is_run_dir(os.fspath(name)) else None


def read_json(path: str):
    """A JSON file's content, or None when it is missing or half written."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def eval_metrics(run_dir: str) -> dict | None:
    """The run's ``eval/metrics.json`` (None before ``ownllm eval``). Runs evaluated before the rename
    called the loss on the test answers ``val_loss``; it is read as ``test_loss``."""
    result = read_json(os.path.join(run_dir, "eval", "metrics.json"))
    for side in ("base", "tuned"):
        metrics = (result or {}).get(side)
        if isinstance(metrics, dict) and "val_loss" in metrics:
            metrics.setdefault("test_loss", metrics.pop("val_loss"))
    return result


def run_config(run_dir: str | None) -> dict:
    """The run's ``config.yaml`` as a dict ({} when there is none)."""
    path = os.path.join(run_dir or "", "config.yaml")
    if not run_dir or not os.path.exists(path):
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def system_prompt(run_dir: str | None) -> str | None:
    """The system prompt the run was trained with (``--system`` of train or of data prepare)."""
    if not run_dir:
        return None
    report = read_json(os.path.join(run_dir, "data", "report.json")) or {}
    return run_config(run_dir).get("system") or (report.get("settings") or {}).get("system")


def data_stats(run_dir: str) -> tuple[int, float, dict | None]:
    """Training rows, mean tokens per row and the rows' length histogram (``data.report.lengths_from_histogram``
    turns it into lengths for the planner), from a prepared run directory's data report."""
    report = read_json(os.path.join(run_dir, "data", "report.json"))
    if report is None:
        raise DataError(f"{run_dir} has no data/report.json", hint=f"run: ownllm data prepare FILE --out {run_dir}")
    return report["splits"]["train"], report["tokens"]["mean"], report.get("length_histogram")


def adapter_in(name) -> str | None:
    """The adapter folder of a run directory (its adapter/) or an adapter folder itself, else None."""
    name = os.fspath(name)
    if not os.path.isdir(name):
        return None
    if os.path.exists(os.path.join(name, "adapter_config.json")):
        return name
    sub = os.path.join(name, "adapter")
    return sub if os.path.exists(os.path.join(sub, "adapter_config.json")) else None


def base_of_adapter(adapter: str) -> str | None:
    """The base model an adapter was trained on: the name the person gave (kept by our trainer in
    ownllm.json), else peft's ``base_model_name_or_path``."""
    meta = read_json(os.path.join(adapter, "ownllm.json")) or {}
    cfg = read_json(os.path.join(adapter, "adapter_config.json")) or {}
    return meta.get("base_model") or cfg.get("base_model_name_or_path")


def trained_output(run_dir: str) -> str | None:
    """The run's result: adapter/ (LoRA, DoRA, QLoRA, prefix) or model/ (full fine-tuning), once trained."""
    return next((p for p in (os.path.join(run_dir, "adapter"), os.path.join(run_dir, "model"))
                 if os.path.isdir(p)), None)


def complete_checkpoints(folder: str) -> list[str]:
    """checkpoint-N folders whose trainer_state.json exists (written last, so the save finished), oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(d.split("-")[1]), os.path.join(folder, d)) for d in os.listdir(folder)
             if d.startswith("checkpoint-") and d.split("-")[1].isdigit()
             and os.path.exists(os.path.join(folder, d, "trainer_state.json"))]
    return [path for _, path in sorted(found)]


def earlier_stages(run_dir: str) -> list[str]:
    """The run's archived stages, oldest first (``RUN/stages/1``, ``RUN/stages/2``, ...)."""
    root = os.path.join(run_dir, "stages")
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted((d for d in os.listdir(root) if d.isdigit()), key=int)]


def earlier_tests(run_dir: str) -> list[tuple[str, str]]:
    """(name, path) of every earlier stage's test split, oldest first: what the report card scores beside
    the run's own test split."""
    out = []
    for s in earlier_stages(run_dir):
        path = os.path.join(s, "data", "test.jsonl")
        if os.path.exists(path) and os.path.getsize(path):
            out.append((f"stage {os.path.basename(s)}", path))
    return out
