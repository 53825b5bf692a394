"""A run directory: the one place that knows its layout.

``runs/NAME/`` holds everything a run made (ARCHITECTURE.md's flow)::

    config.yaml            what was asked (reproduces the run: ownllm train runs/NAME/config.yaml)
    data/                  train/val/test.jsonl, rejected.jsonl, report.md, report.json   (prepare)
    plan.json              hardware, memory, time, the settings chosen                  (plan)
    checkpoints/           checkpoint-N/ (complete when trainer_state.json is in it)    (train)
    adapter/ | model/      the result: an adapter, or a full fine-tune's weights
    metrics.jsonl loss.png train_summary.json status.json tensorboard/
    eval/                  metrics.json, report.md, report.html, samples.jsonl          (evaluate)
    export/NAME/           merged/, adapter/, onnx/, gguf-Q/, q4/: each with manifest.json (export)
    stages/N/              a continual run's earlier stages, each laid out the same
    studio/                the studio's job records and logs

Every package asks ``RunDir`` for a path or for what a stage left; none joins a run's paths itself.
Nothing here loads a model.
"""
from __future__ import annotations

import json
import os

from ownllm.errors import DataError

# what a finished stage of a continual run moves into stages/N/ (config.yaml is copied: the run goes on with it)
STAGE_ENTRIES = ("adapter", "checkpoints", "data", "eval", "export", "train_summary.json", "metrics.jsonl",
                 "loss.png", "tensorboard", "status.json", "plan.json")


def read_json(path: str):
    """A JSON file's content, or None when it is missing or half written."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class RunDir:
    """``runs/NAME``: its paths (properties and ``split``/``eval_file``/... for named files) and what each
    stage wrote there (``is_prepared``, ``trained_output``, ``summary``, ``eval_metrics``, ...)."""

    def __init__(self, path):
        self.path = os.fspath(path.path if isinstance(path, RunDir) else path)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and os.path.abspath(self.path) == os.path.abspath(other.path)

    def __hash__(self) -> int:
        return hash(os.path.abspath(self.path))

    def _at(self, *parts) -> str:
        return os.path.join(self.path, *parts)

    # -- the layout -----------------------------------------------------------------------------------
    config_yaml = property(lambda self: self._at("config.yaml"))
    data_dir = property(lambda self: self._at("data"))
    plan_json = property(lambda self: self._at("plan.json"))
    checkpoints_dir = property(lambda self: self._at("checkpoints"))
    adapter_dir = property(lambda self: self._at("adapter"))
    model_dir = property(lambda self: self._at("model"))
    tensorboard_dir = property(lambda self: self._at("tensorboard"))
    metrics_jsonl = property(lambda self: self._at("metrics.jsonl"))
    loss_png = property(lambda self: self._at("loss.png"))
    summary_json = property(lambda self: self._at("train_summary.json"))
    status_json = property(lambda self: self._at("status.json"))
    eval_dir = property(lambda self: self._at("eval"))
    export_dir = property(lambda self: self._at("export"))
    stages_dir = property(lambda self: self._at("stages"))
    studio_dir = property(lambda self: self._at("studio"))
    feedback_jsonl = property(lambda self: self._at("feedback.jsonl"))  # what people said about its answers

    def split(self, name: str) -> str:
        """data/NAME.jsonl: train, val, test or rejected."""
        return self._at("data", f"{name}.jsonl")

    def data_file(self, name: str) -> str:
        """data/NAME: report.json, report.md, length_histogram.png."""
        return self._at("data", name)

    def eval_file(self, name: str) -> str:
        """eval/NAME: metrics.json, report.md, report.html, samples.jsonl."""
        return self._at("eval", name)

    def export(self, name: str) -> str:
        """export/NAME: one export's folder (merged, adapter, onnx, gguf-q8_0, q4, ...)."""
        return self._at("export", name)

    def checkpoint(self, name: str) -> str:
        """checkpoints/NAME (e.g. checkpoint-100)."""
        return self._at("checkpoints", name)

    def studio_file(self, name: str) -> str:
        """studio/NAME: a studio job's record, end record or log."""
        return self._at("studio", name)

    def staging(self, name: str) -> str:
        """A hidden folder in the run for a result being written (renamed into place when complete)."""
        return self._at(f".{name}")

    def stage(self, n: int | str) -> "RunDir":
        """stages/N: an earlier stage of a continual run, laid out like a run."""
        return RunDir(self._at("stages", str(n)))

    def preparing_stage(self, n: int) -> "RunDir":
        """stages/.preparing-N: the next stage's data while it is prepared (nothing moves before it passes)."""
        return RunDir(self._at("stages", f".preparing-{n}"))

    def entry(self, name: str) -> str:
        """A top-level entry by name (STAGE_ENTRIES, config.yaml): what a continual stage moves."""
        return self._at(name)

    # -- what the stages left ----------------------------------------------------------------------------
    def is_run(self) -> bool:
        """True for a run directory: it has a config, prepared data or a training status."""
        return os.path.isdir(self.path) and any(os.path.exists(self._at(p)) for p in
                                                ("config.yaml", "data", "status.json"))

    def is_prepared(self) -> bool:
        """Prepared by the prepare stage: data/train.jsonl exists."""
        return os.path.exists(self.split("train"))

    def config(self) -> dict:
        """config.yaml as a dict ({} when there is none)."""
        if not os.path.exists(self.config_yaml):
            return {}
        import yaml

        with open(self.config_yaml, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}

    def data_report(self) -> dict | None:
        return read_json(self.data_file("report.json"))

    def plan(self) -> dict | None:
        return read_json(self.plan_json)

    def summary(self) -> dict | None:
        return read_json(self.summary_json)

    def status(self) -> dict | None:
        return read_json(self.status_json)

    def eval_metrics(self) -> dict | None:
        """eval/metrics.json (None before evaluation). Runs evaluated before the rename called the loss on
        the test answers ``val_loss``; it is read as ``test_loss``."""
        result = read_json(self.eval_file("metrics.json"))
        for side in ("base", "tuned"):
            metrics = (result or {}).get(side)
            if isinstance(metrics, dict) and "val_loss" in metrics:
                metrics.setdefault("test_loss", metrics.pop("val_loss"))
        return result

    def system_prompt(self) -> str | None:
        """The system prompt the run was trained with (``--system`` of train or of data prepare)."""
        report = self.data_report() or {}
        return self.config().get("system") or (report.get("settings") or {}).get("system")

    def data_stats(self) -> tuple[int, float, dict | None]:
        """Training rows, mean tokens per row and the rows' length histogram (``data.report.lengths_from_histogram``
        turns it into lengths for the planner), from the data report."""
        report = self.data_report()
        if report is None:
            raise DataError(f"{self.path} has no data/report.json",
                            hint=f"run: ownllm data prepare FILE --out {self.path}")
        return report["splits"]["train"], report["tokens"]["mean"], report.get("length_histogram")

    def trained_output(self) -> str | None:
        """adapter/ (LoRA, DoRA, QLoRA, prefix) or model/ (full fine-tuning), once trained."""
        return next((p for p in (self.adapter_dir, self.model_dir) if os.path.isdir(p)), None)

    def complete_checkpoints(self) -> list[str]:
        """checkpoint-N folders whose trainer_state.json exists (written last, so the save finished), oldest first."""
        return complete_checkpoints(self.checkpoints_dir)

    def exports(self) -> list[tuple[str, dict]]:
        """(name, manifest) of every export with a manifest.json, by name."""
        folder = self.export_dir
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        return [(n, m) for n in names if (m := read_json(os.path.join(self.export(n), "manifest.json"))) is not None]

    def earlier_stages(self) -> list["RunDir"]:
        """The run's archived stages, oldest first (stages/1, stages/2, ...)."""
        root = self.stages_dir
        if not os.path.isdir(root):
            return []
        return [self.stage(d) for d in sorted((d for d in os.listdir(root) if d.isdigit()), key=int)]

    def earlier_tests(self) -> list[tuple[str, str]]:
        """(name, path) of every earlier stage's test split, oldest first: what the report card scores beside
        the run's own test split."""
        out = []
        for s in self.earlier_stages():
            path = s.split("test")
            if os.path.exists(path) and os.path.getsize(path):
                out.append((f"stage {os.path.basename(s.path)}", path))
        return out

    @staticmethod
    def under_runs(name: str) -> "RunDir":
        """runs/NAME in the working folder: where a new run goes by default."""
        return RunDir(os.path.join("runs", name))

    @staticmethod
    def default_for(data) -> "RunDir":
        """Where a run on ``data`` goes when no --out is given: a prepared run trains in place, a file
        ``x.jsonl`` in runs/x, data in memory in runs/run-DATE-TIME."""
        import time

        if data is not None and isinstance(data, (str, os.PathLike)):
            if RunDir(data).is_prepared() or os.path.isdir(os.path.join(data, "data")):
                return RunDir(data)
            return RunDir.under_runs(os.path.splitext(os.path.basename(os.path.normpath(data)))[0])
        return RunDir.under_runs(time.strftime("run-%Y%m%d-%H%M%S"))


def run_dir_of(name) -> RunDir | None:
    """``name`` as a RunDir when it is a run directory, else None (an alias, a model folder, a file)."""
    if isinstance(name, RunDir):
        return name
    return RunDir(name) if isinstance(name, (str, os.PathLike)) and RunDir(name).is_run() else None


def adapter_in(name) -> str | None:
    """The adapter folder of a run directory (its adapter/) or an adapter folder itself, else None."""
    name = os.fspath(name)
    if not os.path.isdir(name):
        return None
    if os.path.exists(os.path.join(name, "adapter_config.json")):
        return name
    sub = RunDir(name).adapter_dir
    return sub if os.path.exists(os.path.join(sub, "adapter_config.json")) else None


def base_of_adapter(adapter: str) -> str | None:
    """The base model an adapter was trained on: the name the person gave (kept by our trainer in
    ownllm.json), else peft's ``base_model_name_or_path``."""
    meta = read_json(os.path.join(adapter, "ownllm.json")) or {}
    cfg = read_json(os.path.join(adapter, "adapter_config.json")) or {}
    return meta.get("base_model") or cfg.get("base_model_name_or_path")


def complete_checkpoints(folder: str) -> list[str]:
    """checkpoint-N folders in ``folder`` whose trainer_state.json exists, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(d.split("-")[1]), os.path.join(folder, d)) for d in os.listdir(folder)
             if d.startswith("checkpoint-") and d.split("-")[1].isdigit()
             and os.path.exists(os.path.join(folder, d, "trainer_state.json"))]
    return [path for _, path in sorted(found)]
