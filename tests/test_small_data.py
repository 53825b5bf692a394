"""Small datasets: the size regime the data report and the plan state, validation too small to stop on, and a
dataset too small to hold anything out."""
import json

import pytest


@pytest.mark.parametrize("train,val,test,name,stops", [
    (5, 0, 0, "tiny", False), (31, 4, 4, "small", False), (80, 10, 10, "small", False),
    (240, 30, 30, "small", True), (3000, 300, 300, "medium", True), (90000, 5000, 5000, "large", True)])
def test_size_regime(train, val, test, name, stops):
    from ownllm.data.regime import size_regime

    r = size_regime(train, val, test)
    assert r["name"] == name and r["early_stopping"] is stops and str(val if name != "tiny" else train) in r["why"]


def test_small_validation_neither_stops_nor_chooses_the_checkpoint(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    """4 validation rows: the run trains every planned step and keeps the last, even when validation worsens."""
    from ownllm.training import hf
    from ownllm.training.trainer import Trainer

    losses = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    real = hf.HFTrainer.evaluation_loop

    def worsening(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.metrics["eval_loss"] = next(losses)
        return out

    monkeypatch.setattr(hf.HFTrainer, "evaluation_loop", worsening)
    args = {"precision": "fp32", "batch_size": 4, "max_steps": 8, "eval_steps": 1, "save_steps": 1,
            "protect": "off", "output_dir": str(tmp_path / "s")}
    trainer = Trainer(model=tiny_model_dir, train_dataset=qa_file, args=args)
    summary = trainer.train()
    assert summary["val_rows"] == 4 and summary["regime"]["name"] == "small"
    assert summary["global_step"] == 8 and summary["stopped_because"] == "max_steps"  # no early stop
    assert summary["best_checkpoint_by"] == "last step" and summary["best_checkpoint"] is None
    assert summary["best_val_loss"] == 8.0  # the kept model's: the last step's, not the lowest
    assert trainer.config.early_stopping_patience == 0
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["regime"]["name"] == "small" and "too few to stop on" in plan["text"]
    report = (tmp_path / "s" / "data" / "report.md").read_text()
    assert "- size: **small**" in report and "4 validation rows" in report
    from ownllm.evaluation.evaluate import evaluate

    chosen = evaluate(str(tmp_path / "s"), max_new_tokens=2)["settings_chosen"]
    assert chosen["how"] == "defaults" and chosen["given"] == [] and chosen["regime"]["name"] == "small"
    card = (tmp_path / "s" / "eval" / "report.md").read_text()
    assert "Settings (learning rate 0.001, rank 64, epochs 10, max steps 8): the defaults for a small dataset" in card

    # with validation rows enough, the same run stops early and ends on its best checkpoint
    monkeypatch.setattr("ownllm.data.regime.TRUSTED_VAL_ROWS", 4)
    losses = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    summary = Trainer(model=tiny_model_dir, train_dataset=qa_file,
                      args={**args, "output_dir": str(tmp_path / "t")}).train()
    assert summary["stopped_because"] == "early_stopping" and summary["global_step"] == 4
    assert summary["best_val_loss"] == 1.0 and summary["best_checkpoint"].endswith("checkpoint-1")


def test_a_dataset_too_small_to_hold_out_trains_with_a_warning(tiny_model_dir, tmp_path, capsys):
    from ownllm.cli import main

    rows = [{"messages": [{"role": "user", "content": f"问题{i}：编号{i}的代码是什么？"},
                          {"role": "assistant", "content": f"编号{i}的代码是{100 + i}。"}]} for i in range(6)]
    data = tmp_path / "six.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    code = main(["quickstart", "--data", str(data), "--model", str(tiny_model_dir), "--precision", "fp32",
                 "--max-steps", "2", "--protect", "off", "--out", str(run)])
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.err
    assert "WARNING: 6 rows: nothing is held out, so there is no honest test" in out.err
    assert (run / "adapter").exists()
    assert "no test rows" in out.out and f"ownllm eval {run} --data" in out.out


@pytest.mark.parametrize("rows,protect,asked,expected", [
    (31, "default", None, 4),     # 31 + 16 replayed rows: 6 steps an epoch at 8, 60 in 10 epochs: too few
    (80, "default", None, 8),     # 80 + 28: 14 steps an epoch, 140 in 10
    (31, "default", 16, 16),      # given: kept
    (90, "off", None, 8),         # 12 steps an epoch, 120
    (60, "off", None, 4),         # 8 steps an epoch, 80
])
def test_small_runs_take_more_smaller_steps(rows, protect, asked, expected):
    from ownllm.training.config import TrainConfig
    from ownllm.training.defaults import resolve_defaults

    cfg = resolve_defaults(TrainConfig(protect=protect, batch_size=asked), rows, rows // 8)
    assert cfg.batch_size == expected and cfg.grad_accum == 1


def test_default_protection_is_strong_on_a_small_dataset():
    from ownllm.training.config import TrainConfig
    from ownllm.training.protect import LEVELS, SMALL_DATA_ROWS, protection_for, replay_for_plan

    cfg = TrainConfig()
    assert protection_for(cfg, SMALL_DATA_ROWS - 1) == LEVELS["strong"]
    assert protection_for(cfg, SMALL_DATA_ROWS) == LEVELS["default"] and protection_for(cfg) == LEVELS["default"]
    assert replay_for_plan("default", "lora", 40) == 30 and replay_for_plan("default", "lora", 400) == 140
    assert protection_for(TrainConfig(protect="off"), 10) is None
    assert protection_for(TrainConfig(method="full"), 10) is None
