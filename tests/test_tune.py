"""`ownllm tune` / ``Trainer.tune``: trials on the run's validation rows, the defaults first, the best by the
stated score, pruning, resuming after a crash, and the person's mistakes."""
import json

import pytest
import yaml

ARGS = {"precision": "fp32", "batch_size": 8, "epochs": 1, "logging_steps": 1}


def _trials(run) -> list[dict]:
    return [json.loads(line) for line in (run / "tune" / "trials.jsonl").read_text().splitlines()]


def test_tune_trains_the_defaults_first_and_the_best_trial_becomes_the_run(tiny_model_dir, qa_file, tmp_path):
    from ownllm.training.trainer import Trainer
    from ownllm.training.tune import DRIFT_WEIGHT

    run = tmp_path / "run"
    trainer = Trainer(model=tiny_model_dir, train_dataset=qa_file, args={**ARGS, "output_dir": str(run)})
    summary = trainer.tune(trials=3, prune=False)  # every trial to its end (pruning: its own test)
    trials = _trials(run)
    assert [t["number"] for t in trials] == [0, 1, 2]
    # trial 0: the defaults for 32 training rows (lr 1e-3, rank 64); epochs was given: fixed; protection is not
    # searched on so few rows (the default level is strong's already)
    assert trials[0]["params"] == {"lr": 1e-3, "lora_r": 64}
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3
    for t in trials:  # the stated score: validation loss + 2 x general drift at the best checkpoint
        assert t["state"] == "complete" and t["general_drift"] is not None
        assert t["score"] == pytest.approx(t["val_loss"] + DRIFT_WEIGHT * t["general_drift"], abs=1e-4)
        assert t["scores_by_step"]
    best = min(trials, key=lambda t: t["score"])
    assert trainer.tune_result.best["number"] == best["number"]
    assert summary["tuned_by"]["trial"] == best["number"] and summary["run_dir"] == str(run)
    # the run holds the best trial's model, summary and curve; config.yaml trains the chosen settings again
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "loss.png").exists()
    assert json.loads((run / "train_summary.json").read_text())["tuned_by"]["trial"] == best["number"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lr"] == best["params"]["lr"] and saved["lora_r"] == best["params"]["lora_r"]
    assert saved["out"] == str(run) and saved["data"] == str(run)
    assert json.loads((run / "plan.json").read_text())["settings"]["lr"] == best["params"]["lr"]
    assert not (run / "tune" / f"trial-{best['number']}" / "adapter").exists()  # moved, not copied
    tune = json.loads((run / "tune" / "tune.json").read_text())
    assert tune["best"]["number"] == best["number"] and len(tune["trials"]) == 3 and "drift" in tune["rule"]
    assert "trial" in trainer.tune_result.table() and f"{best['number']} *" in trainer.tune_result.table()
    from ownllm.training.tune import trials_view

    view = trials_view(str(run))  # what the studio's trial plot draws
    assert [t["number"] for t in view["trials"]] == [0, 1, 2] and view["best"] == best["number"]
    assert view["trials"][0]["params"] == trials[0]["params"] and view["trials"][0]["score"] == trials[0]["score"]
    # the trials never saw the test rows: each trained on the run's own train split, scored on its val rows
    train_rows = len((run / "data" / "train.jsonl").read_text().splitlines())
    from ownllm.training.config import TrainConfig
    from ownllm.training.defaults import resolve_defaults
    from ownllm.training.tune import _steps

    # the pruner's warm-up is a third of the defaults' steps: counted as the run counts them, replay included
    assert trials[0]["steps"] == _steps(resolve_defaults(TrainConfig(batch_size=8, epochs=1), train_rows), train_rows)
    for t in trials:
        trial = run / "tune" / f"trial-{t['number']}"
        assert yaml.safe_load((trial / "config.yaml").read_text())["data"] == str(run)
        if t["number"] != best["number"]:
            assert json.loads((trial / "train_summary.json").read_text())["train_rows"] == train_rows
    from ownllm.evaluation.evaluate import evaluate

    result = evaluate(str(run), max_new_tokens=2)  # the run evaluates as any other; its card says how it was tuned
    chosen = result["settings_chosen"]
    assert chosen["how"] == "tune" and chosen["trial"] == best["number"] and chosen["trials"] == 3
    card = (run / "eval" / "report.md").read_text()
    assert f"chosen by `ownllm tune`: trial {best['number']} of 3" in card and "drift" in card
    assert "ownllm tune" in (run / "eval" / "report.html").read_text()


def test_search_space_leaves_what_was_given():
    from ownllm.training.config import TrainConfig
    from ownllm.training.defaults import resolve_defaults
    from ownllm.training.tune import search_space

    def space(n, **given):
        cfg = TrainConfig(**given)
        return search_space(cfg, resolve_defaults(cfg, n, n // 8), n)

    assert set(space(500)) == {"lr", "lora_r", "epochs", "protect"}
    assert space(500)["lr"].low == pytest.approx(2.5e-4) and space(500)["epochs"].high == 20
    assert set(space(32)) == {"lr", "lora_r", "epochs"}  # under 100 rows default protection is strong's
    assert set(space(500, lr=1e-4, epochs=3)) == {"lora_r", "protect"}
    assert set(space(500, method="full")) == {"lr", "epochs"}  # no rank, no switchable adapter to protect with
    assert set(space(500, protect="off", max_steps=50)) == {"lr", "lora_r"}


def test_a_given_setting_is_not_searched(tiny_model_dir, qa_file, tmp_path):
    from ownllm.training.trainer import Trainer

    run = tmp_path / "run"
    Trainer(model=tiny_model_dir, train_dataset=qa_file,
            args={**ARGS, "output_dir": str(run), "learning_rate": 5e-4, "protect": "off"}).tune(trials=2)
    trials = _trials(run)
    assert all(set(t["params"]) == {"lora_r"} for t in trials)
    assert all(t["general_drift"] is None for t in trials)  # protection off: the score is the validation loss
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 5e-4


def test_a_crashed_search_goes_on_where_it_stopped(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    from ownllm.training import train as train_module
    from ownllm.training.trainer import Trainer

    run = tmp_path / "run"
    make = lambda: Trainer(model=tiny_model_dir, train_dataset=qa_file, args={**ARGS, "output_dir": str(run)})
    real, calls = train_module.train_run, []

    def crash_on_third(cfg, *args, **kwargs):
        calls.append(cfg.out)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine went away in the middle of trial 2
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_run", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        make().tune(trials=4)
    assert [t["number"] for t in _trials(run)] == [0, 1]
    first_two = _trials(run)
    calls.clear()
    monkeypatch.setattr(train_module, "train_run", real)
    spy = []
    monkeypatch.setattr(train_module, "train_run", lambda cfg, *a, **k: spy.append(cfg.out) or real(cfg, *a, **k))
    make().tune(trials=4)
    trials = _trials(run)
    assert [t["number"] for t in trials] == [0, 1, 2, 3] and trials[:2] == first_two
    assert [p.rsplit("-", 1)[1] for p in spy] == ["2", "3"]  # only the trials that had not finished


def test_pruned_trials_stop_early_and_keep_no_weights(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    import optuna

    from ownllm.training.trainer import Trainer

    class PruneAllButTheDefaults(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number >= 1

    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: PruneAllButTheDefaults())
    run = tmp_path / "run"
    args = {**ARGS, "output_dir": str(run), "epochs": 3, "eval_steps": 1, "save_steps": 1}
    Trainer(model=tiny_model_dir, train_dataset=qa_file, args=args).tune(trials=3)
    trials = _trials(run)
    assert trials[0]["state"] == "complete" and [t["state"] for t in trials[1:]] == ["pruned", "pruned"]
    assert all(t["steps"] < trials[0]["steps"] and t["stopped_because"] == "pruned" for t in trials[1:])
    for t in trials[1:]:
        assert not (run / "tune" / f"trial-{t['number']}" / "adapter").exists()
        assert not (run / "tune" / f"trial-{t['number']}" / "checkpoints").exists()
    assert json.loads((run / "train_summary.json").read_text())["tuned_by"]["trial"] == 0


def test_tune_mistakes_end_in_one_clear_message(tiny_model_dir, qa_file, tmp_path, monkeypatch, capsys):
    import dataclasses

    from ownllm.cli import main
    from ownllm.training import plan as plan_module

    base = ["tune", "--data", qa_file, "--model", tiny_model_dir, "--precision", "fp32", "--epochs", "1"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "--time-budget (e.g. 30m) or --trials N" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--trials", "2", "--lr", "1e-3", "--lora-r", "8",
                        "--protect", "off"]) == 2
    assert "nothing to tune" in capsys.readouterr().err
    real = plan_module.plan_run

    def slow_plan(*args, **kwargs):  # the planner says one trial takes an hour here
        p = real(*args, **kwargs)
        return dataclasses.replace(p, estimate={**p.estimate, "hours": 1.0})

    monkeypatch.setattr(plan_module, "plan_run", slow_plan)
    assert main(base + ["--out", str(tmp_path / "c"), "--time-budget", "10m"]) == 2
    err = capsys.readouterr().err
    assert "shorter than one trial" in err and "~60 min" in err and "Traceback" not in err


def test_tune_command_prints_the_trials_and_the_choice(tiny_model_dir, qa_file, tmp_path, capsys):
    from ownllm.cli import main

    run = tmp_path / "run"
    assert main(["tune", "--data", qa_file, "--model", tiny_model_dir, "--precision", "fp32", "--epochs", "1",
                 "--trials", "2", "--out", str(run), "--no-prune"]) == 0
    out = capsys.readouterr().out
    assert "trial" in out and "score" in out and "best: trial" in out and f"ownllm eval {run}" in out
    assert len(_trials(run)) == 2 and (run / "adapter").exists()
