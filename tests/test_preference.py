"""Preference tuning (issue 41, part 3): `--method dpo|kto|orpo` with TRL's trainers on a LoRA adapter, from a
base model or as a new stage of a finished run (`ownllm train --resume RUN --data RUN/feedback.jsonl --method
kto`), and the messages a person gets when the data cannot train the method."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import shop_rows, train_shop_run
from ownllm.data.feedback import Feedback, model_id, record
from ownllm.data.prepare import PreparedData
from ownllm.errors import DataError
from ownllm.training.preference import trl_rows, usable


def _chat(q: str, a: str, **judged) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **judged}


def test_rows_for_each_method_and_what_is_said_when_none_can_train():
    rows = [_chat("a?", "A good.", rejected="A bad."), _chat("b?", "B good.", label=True),
            _chat("b?", "B bad.", label=False), _chat("c?", "C bad.", label=False), _chat("d?", "plain")]
    dpo, account = trl_rows(rows, "dpo")
    assert account == {"rows": 5, "pairs": 1, "good": 1, "bad": 2, "supervised_left_out": 1, "pairs_from_labels": 1,
                       "examples": 2}
    assert dpo[1] == {"prompt": [{"role": "user", "content": "b?"}], "chosen": [{"role": "assistant", "content": "B good."}],
                      "rejected": [{"role": "assistant", "content": "B bad."}]}
    kto, _ = trl_rows(rows, "kto")
    assert [(e["completion"][0]["content"], e["label"]) for e in kto] == [
        ("A good.", True), ("A bad.", False), ("B good.", True), ("B bad.", False), ("C bad.", False)]

    labels_only = PreparedData([_chat("x?", "X.", label=True), _chat("y?", "Y.", label=False)], [], [], {})
    with pytest.raises(DataError, match=r"of 2 training rows, 0 are pairs, 1 good and 1 bad") as e:
        usable(labels_only, "dpo")
    assert "--method kto" in e.value.hint
    with pytest.raises(DataError, match="all 2 training answers are good"):
        usable(PreparedData([_chat("x?", "X.", label=True), _chat("y?", "Y.", label=True)], [], [], {}), "kto")
    with pytest.raises(DataError, match="1 supervised rows with no judgement"):
        usable(PreparedData([_chat("x?", "X.")], [], [], {}), "orpo")


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_base_model_learns_from_pairs_with_trl(method, tiny_model_dir, tmp_path):
    from ownllm.training.trainer import Trainer

    pairs = [{"prompt": f"Code of item {i}?", "chosen": f"Item {i} has code {1000 + 7 * i}. Thank you!",
              "rejected": f"Item {i}? No idea."} for i in range(24)]
    out = tmp_path / method
    data = tmp_path / "pairs.jsonl"  # a file: split 8:1:1, so the report card has held-out pairs to score
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    summary = Trainer(model=tiny_model_dir, train_dataset=str(data),
                      args={"output_dir": str(out), "method": method, "max_steps": 2, "precision": "fp32"}).train()
    assert summary["method"] == method and summary["global_step"] == 2
    p = summary["preference"]
    assert p["pairs"] == p["examples"] == summary["train_rows"] < 24  # some pairs held out for validation
    assert p["train_accuracy_first"] is not None and summary["val_rows"] > 0 and p["eval_accuracy"] is not None
    assert p["reference"] == ("none (ORPO needs none)" if method == "orpo" else
                              "the base model (a fresh adapter starts at zero)")
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert weights and not [k for k in weights if ".ref." in k]  # TRL's frozen reference copy is not saved
    assert f"method: {method}" in (out / "config.yaml").read_text()
    assert (out / "loss.png").exists()
    if method == "dpo":  # the report card scores the held-out pairs, base → tuned
        from ownllm.evaluation.evaluate import evaluate

        result = evaluate(str(out), max_new_tokens=4)
        assert result["base"]["preference"]["pairs"] == result["tuned"]["preference"]["pairs"] == result["samples"]
        assert "preference accuracy" in result["headline"] and "held-out pairs" in result["headline"]


def test_preference_scores_follow_which_answer_is_chosen(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.evaluation.measure import answer_logprob, preference_scores

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [_chat(f"Code of item {i}?", f"Item {i} has code {1000 + 7 * i}.", rejected="No.") for i in range(4)]
    swapped = [_chat(r["messages"][0]["content"], r["rejected"], rejected=r["messages"][1]["content"]) for r in rows]
    a, b = preference_scores(model, tok, rows), preference_scores(model, tok, swapped)
    assert a["pairs"] == b["pairs"] == 4 and a["margin"] == pytest.approx(-b["margin"], abs=1e-3)
    assert a["accuracy"] + b["accuracy"] == pytest.approx(1.0)  # no ties on random weights
    longer = answer_logprob(model, tok, rows[0])
    assert longer < answer_logprob(model, tok, swapped[0]) < 0  # more tokens to predict: a lower summed log-prob
    assert preference_scores(model, tok, [_chat("q?", "a.")]) is None


def test_feedback_on_a_run_trains_a_kto_stage_from_the_cli_and_flags_other_models(tiny_model_dir, tmp_path):
    run = train_shop_run(tiny_model_dir, tmp_path / "shop", protect="off")
    first = (tmp_path / "shop/adapter/adapter_model.safetensors").read_bytes()
    feedback = os.path.join(run, "feedback.jsonl")
    mine = model_id(run)
    for i, row in enumerate(shop_rows(16)):
        asked, answer = row["messages"][:1], row["messages"][1]["content"]
        record(feedback, Feedback(asked, answer + (" Thanks!" if i % 2 else ""), label="good" if i % 2 else "bad",
                                  model=mine if i else "sha256:0000000000000000", source="chat"))
    digest = hashlib.sha256(open(feedback, "rb").read()).hexdigest()
    done = subprocess.run([sys.executable, "-m", "ownllm", "train", "--resume", run, "--data", feedback,
                           "--method", "kto", "--max-steps", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of 16 judged answers were written by other weights" in done.stderr
    assert hashlib.sha256(open(feedback, "rb").read()).hexdigest() == digest  # the person's feedback is untouched
    assert (tmp_path / "shop/stages/1/adapter/adapter_model.safetensors").read_bytes() == first
    assert (tmp_path / "shop/adapter/adapter_model.safetensors").read_bytes() != first
    summary = json.loads((tmp_path / "shop/train_summary.json").read_text())
    assert summary["method"] == "kto" and summary["continual"]["judged_answers_of_other_models"] == 1
    assert summary["continual"]["replayed_earlier_rows"] == 0
    assert summary["preference"]["reference"] == "the adapter as this stage starts (the run's previous stage)"
    assert summary["preference"]["good"] + summary["preference"]["bad"] == summary["train_rows"]


def test_the_plan_counts_both_answers_and_the_reference():
    from ownllm.training.config import TrainConfig
    from ownllm.training.plan import PlanConfig, plan_run

    def hours(method):
        cfg = TrainConfig(model="qwen2.5-7b", method=method, epochs=3, protect="off", batch_size=4, grad_accum=1)
        p = plan_run(cfg, None, None, options=PlanConfig(gpu="RTX 4090", examples=2000, tokens_per_example=300))
        return p.estimate["hours"], p.text

    lora, _ = hours("lora")
    dpo, text = hours("dpo")
    orpo, _ = hours("orpo")
    assert dpo / lora == pytest.approx(8 / 3, rel=0.05) and orpo / lora == pytest.approx(2, rel=0.05)
    assert "reference's forward passes" in text


def _pairs_file(tmp_path, n=24):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Code of item {i}?", "chosen": f"Item {i} has code {1000 + 7 * i}. "
                                        "Thank you!", "rejected": f"Item {i}? No idea."}) + "\n" for i in range(n)),
                    encoding="utf-8")
    return str(data)


def test_forgetting_protection_holds_a_preference_stage_near_the_base_model(tiny_model_dir, tmp_path):
    """--protect replays the base model's general answers beside each batch: with it the adapter moves the model
    less on general prompts than without, at the same steps and learning rate."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.training.config import TrainConfig
    from ownllm.training.data import tokenize
    from ownllm.training.protect import LEVELS, base_distributions, general_drift, replay_rows
    from ownllm.training.trainer import Trainer

    sharp = str(tmp_path / "sharp")  # the tiny random model with peaked next-token distributions: a random model's
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # are near uniform, and hardly drift at all
    base.model.norm.weight.data *= 30
    base.save_pretrained(sharp)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(sharp)
    data, drift = _pairs_file(tmp_path), {}
    for level in ("off", "strong"):
        out = tmp_path / level
        s = Trainer(model=sharp, train_dataset=data,
                    args={"output_dir": str(out), "method": "dpo", "max_steps": 5, "lr": 5e-3, "precision": "fp32",
                          "protect": level}).train()
        assert s["protection"]["applied"] == (level == "strong")
        if level == "strong":
            assert s["protection"]["replay_per_step"] == 3 and s["protection"]["kl_weight"] == LEVELS["strong"].kl_weight
            assert s["general_drift"] > 0  # the replayed rows were scored in training, after the first step
        tok = AutoTokenizer.from_pretrained(sharp)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sharp), str(out / "adapter"))
        cfg = TrainConfig(model=sharp, data=data)
        rows = list(tokenize(replay_rows(model, tok, cfg, [], LEVELS["strong"]), tok, cfg)[0])
        targets = base_distributions(model, rows, tok.pad_token_id)  # the adapter switched off: the base model
        drift[level] = general_drift(model, rows, targets, tok.pad_token_id)
    assert 0 < drift["strong"] < drift["off"]


def test_a_preference_stage_stops_at_the_time_budget(tiny_model_dir, tmp_path):
    from ownllm.training.trainer import Trainer

    s = Trainer(model=tiny_model_dir, train_dataset=_pairs_file(tmp_path, 40),
                args={"output_dir": str(tmp_path / "b"), "method": "kto", "epochs": 200, "precision": "fp32",
                      "protect": "off", "time_budget": "2s"}).train()
    # stopped by the callback at 2 s, or before it by the planner's cap on the steps that fit (a fast machine)
    assert s["stopped_because"] in ("time_budget", "max_steps") and s["global_step"] < 200 * 32 * 2 // 4 // 10
    assert s["stopped_because"] == "time_budget" or s["settings"]["max_steps"] == s["global_step"]
    assert s["time_budget"]["budget_hours"] == pytest.approx(2 / 3600) and s["time_budget"]["predicted_hours"] > 0
