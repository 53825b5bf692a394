"""The visible pipeline: the four stage functions, what each writes, and the dataclass behind each stage's
flags and studio request (docs/architecture.md)."""
import argparse
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from ownllm.rundir import RunDir
from ownllm.training.config import TrainConfig


def test_the_stages_in_order_write_their_parts_and_leave_their_inputs_alone(tiny_model_dir, qa_file, tmp_path):
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.training.data import prepare_for_training
    from ownllm.training.plan import plan_run
    from ownllm.training.train import train_run

    run = RunDir(tmp_path / "run")
    cfg = TrainConfig(model=tiny_model_dir, data=qa_file, out=run.path, max_steps=2, batch_size=4, precision="fp32",
                      protect="off", early_stopping_patience=0).validate()
    asked = dataclasses.replace(cfg)
    data = prepare_for_training(cfg.data, cfg, run)
    assert run.is_prepared() and len(data.train) == 32 and not os.path.exists(run.plan_json)
    plan = plan_run(cfg, data, run, strict=False)
    saved = json.loads(open(run.plan_json, encoding="utf-8").read())
    # the plan chose what `train` would for 32 rows, and says so in plan.json
    assert plan.settings.epochs == 10 and plan.settings.lora_r == 64 and plan.settings.grad_accum == 1
    assert saved["settings"]["epochs"] == 10 and saved["settings"]["lr"] == plan.settings.lr and saved["hours"] > 0
    assert cfg == asked  # the plan stage resolved a copy
    trained = train_run(plan.settings, data, run)
    assert plan.settings == dataclasses.replace(asked, **{k: getattr(plan.settings, k) for k in
                                                          ("lr", "lora_r", "lora_alpha", "epochs", "grad_accum")})
    assert trained.summary["global_step"] == 2 and trained.summary["settings"]["lora_r"] == 64
    assert run.summary() == trained.summary and run.trained_output() == run.adapter_dir
    assert trained.model is not None and trained.tokenizer is not None
    result = evaluate(run, no_base=True, max_samples=2)
    assert run.eval_metrics()["headline"] == result["headline"]


def test_the_guides_trainer_runs_the_same_stages_and_writes_the_plan(tiny_model_dir, qa_file, tmp_path):
    from ownllm.training.trainer import Trainer

    out = tmp_path / "t"
    t = Trainer(model=tiny_model_dir, train_dataset=qa_file,
                args={"output_dir": str(out), "max_steps": 1, "batch_size": 4, "precision": "fp32", "protect": "off"})
    summary = t.train()
    plan = RunDir(out).plan()
    assert plan is not None and plan["settings"]["epochs"] == summary["settings"]["epochs"] == 10
    assert t.plan.settings.lora_r == summary["settings"]["lora_r"] == 64
    assert t.model is not None and summary["output"] == RunDir(out).adapter_dir


def test_ownllm_plan_on_a_prepared_run_chooses_what_train_chooses_and_writes_plan_json(tiny_model_dir, qa_file,
                                                                                      tmp_path):
    run = tmp_path / "p"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    prep = subprocess.run([sys.executable, "-m", "ownllm", "data", "prepare", qa_file, "--out", str(run), "--model",
                           tiny_model_dir], capture_output=True, text=True, env=env, timeout=300)
    assert prep.returncode == 0, prep.stderr[-1500:]
    out = subprocess.run([sys.executable, "-m", "ownllm", "plan", "--data", str(run), "--model", tiny_model_dir,
                          "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    p = json.loads(out.stdout)
    # 32 training rows: 10 epochs, rank 64, no accumulation (a plan once assumed 3 epochs, r 16, accumulation 4)
    assert p["epochs"] == 10 and p["settings"]["lora_r"] == 64 and p["recommendation"]["grad_accum"] == 1
    assert p.pop("export_notes") == [] and RunDir(run).plan() == p


def test_a_run_directory_made_before_plan_json_still_trains_and_resumes(tiny_model_dir, qa_file, tmp_path):
    """An old run: no plan.json, a flat config.yaml. Resuming it plans it (plan.json appears) and goes on."""
    from ownllm.training.trainer import Trainer

    out = tmp_path / "old"
    args = {"output_dir": str(out), "max_steps": 2, "batch_size": 4, "precision": "fp32", "protect": "off",
            "save_steps": 1, "early_stopping_patience": 0}
    Trainer(model=tiny_model_dir, train_dataset=qa_file, args=args).train()
    os.remove(RunDir(out).plan_json)
    again = Trainer(model=tiny_model_dir, train_dataset=str(out), args={**args, "max_steps": 3})
    again.resume_from_checkpoint()
    assert again.train()["global_step"] == 3 and RunDir(out).plan() is not None


# -- one dataclass per stage -------------------------------------------------------------------------------
def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def _sub(name: str, *more: str) -> argparse.ArgumentParser:
    from ownllm.cli import build_parser

    parser = build_parser()
    for word in (name, *more):
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return parser


def _cli_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}


def test_each_stages_flags_come_from_its_dataclass():
    from ownllm.data.from_docs import FromDocsConfig
    from ownllm.data.prepare import PrepareConfig
    from ownllm.evaluation.evaluate import EvalConfig
    from ownllm.export.export import ExportConfig
    from ownllm.training.plan import PlanConfig
    from ownllm.web.settings import ServeConfig, StudioConfig

    for command, cls in ((("data", "prepare"), PrepareConfig), (("data", "inspect"), PrepareConfig),
                         (("data", "from-docs"), FromDocsConfig), (("train",), TrainConfig),
                         (("quickstart",), TrainConfig), (("plan",), PlanConfig), (("eval",), EvalConfig),
                         (("export",), ExportConfig), (("serve",), ServeConfig), (("studio",), StudioConfig)):
        assert _cli_fields(cls) <= _flags(_sub(*command)), (command, _cli_fields(cls) - _flags(_sub(*command)))
    # a field's help is its flag's help
    train = _sub("train")
    lr = next(a for a in train._actions if a.dest == "lr")
    assert lr.help == next(f for f in dataclasses.fields(TrainConfig) if f.name == "lr").metadata["help"]
    assert "--micro-batch" in next(a for a in _sub("plan")._actions if a.dest == "batch_size").option_strings


def test_the_studios_requests_are_the_stages_dataclasses():
    pytest.importorskip("fastapi")
    from ownllm.data.prepare import PrepareConfig
    from ownllm.studio import app
    from ownllm.training.tune import TuneConfig

    for model, classes in ((app.DataOptions, [PrepareConfig]), (app.PlanRequest, [TrainConfig]),
                           (app.TrainRequest, [TrainConfig]), (app.TuneRequest, [TrainConfig, TuneConfig])):
        fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
        for name, info in model.model_fields.items():
            if name in ("inputs", "name"):
                continue
            assert name in fields, (model.__name__, name)
            expected = app.STUDIO_DEFAULTS.get(name, fields[name].default)
            assert info.default == expected, (model.__name__, name, info.default, expected)
            assert info.description == fields[name].metadata["help"]
    with pytest.raises(Exception):
        app.PlanRequest(model="x", no_such_setting=1)  # unknown keys are refused, as before


def test_a_bad_setting_from_the_page_is_refused_with_the_clis_words(tiny_model_dir, tmp_path):
    pytest.importorskip("fastapi")
    from ownllm.errors import ConfigError
    from ownllm.studio.app import TrainRequest, train_argv

    with pytest.raises(ConfigError, match="--lr must be between 0 and 1"):
        train_argv(str(tmp_path), TrainRequest(model=tiny_model_dir, lr=3.0))
    with pytest.raises(ConfigError, match="--method must be one of"):
        train_argv(str(tmp_path), TrainRequest(model=tiny_model_dir, method="magic"))


# -- the run directory ---------------------------------------------------------------------------------------
def test_run_dir_knows_the_layout_and_what_the_stages_left(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.is_run() and run.trained_output() is None and run.summary() is None and run.config() == {}
    os.makedirs(run.data_dir)
    open(run.split("train"), "w").write('{"text": "x"}\n')
    assert run.is_run() and run.is_prepared() and run.split("test").endswith(os.path.join("data", "test.jsonl"))
    os.makedirs(run.stage(2).data_dir)
    os.makedirs(run.stage(1).data_dir)
    open(run.stage(1).split("test"), "w").write('{"text": "y"}\n')
    assert [os.path.basename(s.path) for s in run.earlier_stages()] == ["1", "2"]
    assert run.earlier_tests() == [("stage 1", run.stage(1).split("test"))]
    os.makedirs(run.model_dir)
    assert run.trained_output() == run.model_dir
    assert RunDir.default_for(str(run)) == run  # a prepared run trains in place
    assert RunDir.default_for("some/where/faq.jsonl") == RunDir(os.path.join("runs", "faq"))


def test_config_yaml_keeps_how_the_data_was_prepared_and_train_reads_it_back(tiny_model_dir, qa_file, tmp_path):
    """config.yaml's prepare: section is PrepareConfig's: the run records --pii/--dedup of its data, and a
    config naming a raw file prepares it the same way again."""
    from ownllm.config import load_yaml
    from ownllm.data.prepare import prepare_dataset
    from ownllm.errors import ConfigError
    from ownllm.training.data import prepare_options
    from ownllm.training.trainer import Trainer

    run = tmp_path / "r"
    prepare_dataset([qa_file], str(run), model=tiny_model_dir, pii="mask", dedup="exact")
    Trainer(model=tiny_model_dir, train_dataset=str(run),
            args={"max_steps": 1, "batch_size": 4, "precision": "fp32", "protect": "off"}).train()
    cfg = load_yaml(RunDir(run).config_yaml, TrainConfig)
    assert cfg.prepare["pii"] == "mask" and cfg.prepare["dedup"] == "exact" and "model" not in cfg.prepare
    options = prepare_options(dataclasses.replace(cfg, data=qa_file))
    assert options["pii"] == "mask" and options["model"] == cfg.model
    with pytest.raises(ConfigError, match="prepare: unknown setting 'dedupe'"):
        TrainConfig(prepare={"dedupe": "off"}).validate()
