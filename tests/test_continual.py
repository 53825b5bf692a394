"""Continual learning: `ownllm train --resume RUN --data NEW_FILE` trains new rows on top of a run."""
import hashlib
import json
import os
import subprocess
import sys


def _rows(first: int, last: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is the code for item number {i}?"},
                          {"role": "assistant", "content": f"The code for item {i} is {1000 + 7 * i}."}]}
            for i in range(first, last)]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def _question(row) -> str:
    return row["messages"][0]["content"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ownllm", *args], capture_output=True, text=True, timeout=600)


def test_a_second_stage_keeps_the_first_and_the_report_card_scores_both_test_sets(tiny_model_dir, tmp_path):
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.training.trainer import Trainer

    run = tmp_path / "run"
    first = _write(tmp_path / "first.jsonl", _rows(0, 40))
    Trainer(model=tiny_model_dir, train_dataset=first,
            args={"output_dir": str(run), "max_steps": 3, "precision": "fp32", "batch_size": 4}).train()
    earlier_train, earlier_test = _read(run / "data" / "train.jsonl"), _read(run / "data" / "test.jsonl")
    first_adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    # the new file repeats one of the first stage's test questions: it must not be trained on
    second_rows = _rows(40, 80) + [earlier_test[0]]
    second = _write(tmp_path / "second.jsonl", second_rows)
    digest = hashlib.sha256(open(second, "rb").read()).hexdigest()

    done = _cli("train", "--resume", str(run), "--data", second, "--additional-epochs", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert hashlib.sha256(open(second, "rb").read()).hexdigest() == digest  # the person's file is untouched
    stage1 = run / "stages" / "1"
    # the first stage is kept whole, where it can be compared with the new one
    for entry in ("adapter/adapter_config.json", "data/test.jsonl", "data/train.jsonl", "train_summary.json",
                  "config.yaml", "checkpoints"):
        assert (stage1 / entry).exists(), entry
    assert (stage1 / "adapter" / "adapter_model.safetensors").read_bytes() == first_adapter
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() != first_adapter
    summary = json.loads((run / "train_summary.json").read_text())
    c = summary["continual"]
    assert c["stage"] == 2 and c["left_out_as_earlier_test_or_val"] >= 1
    assert c["started_from"].endswith(os.path.join("stages", "1", "adapter"))
    # the new stage trains the new rows and replays earlier training rows beside them
    train = {_question(r) for r in _read(run / "data" / "train.jsonl")}
    new_questions = {_question(r) for r in second_rows[:-1]}
    replayed = train & {_question(r) for r in earlier_train}
    assert len(replayed) == c["replayed_earlier_rows"] > 0 and len(train - replayed) == c["new_train_rows"]
    assert train - replayed <= new_questions
    assert not train & {_question(r) for r in earlier_test}  # the earlier test stays unseen
    # early stopping watches the new rows; the test split is the new stage's own
    val = {_question(r) for r in _read(run / "data" / "val.jsonl")}
    assert val and val <= new_questions
    assert {_question(r) for r in _read(run / "data" / "test.jsonl")} <= new_questions

    result = evaluate(str(run), max_new_tokens=4)
    [earlier] = result["earlier_tests"]
    assert earlier["name"] == "stage 1" and earlier["samples"] == len(earlier_test)
    for side in ("base", "tuned"):
        assert {"contains", "token_f1", "test_loss"} <= set(earlier[side])
    assert "stage 1's" in result["headline"]
    report = (run / "eval" / "report.md").read_text(encoding="utf-8")
    assert "Test sets side by side" in report and "stage 1 (" in report
    assert "Test sets side by side" in (run / "eval" / "report.html").read_text(encoding="utf-8")

    # a third stage archives the second beside the first
    third = _write(tmp_path / "third.jsonl", _rows(80, 120))
    done = _cli("train", "--resume", str(run), "--data", third, "--max-steps", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "stages" / "2" / "adapter").exists() and (run / "stages" / "1" / "adapter").exists()
    assert [e["name"] for e in evaluate(str(run), max_new_tokens=2, no_base=True)["earlier_tests"]] == ["stage 1", "stage 2"]


def test_continual_refusals_are_one_clear_message(tiny_model_dir, qa_file, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\nmethod: lora\n", encoding="utf-8")
    unfinished = _cli("train", "--resume", str(run), "--data", qa_file)
    assert unfinished.returncode != 0 and "has not finished training" in unfinished.stderr
    assert "Traceback" not in unfinished.stderr and not (run / "stages").exists()
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\nmethod: full\n", encoding="utf-8")
    full = _cli("train", "--resume", str(run), "--data", qa_file)
    assert full.returncode == 2 and "continues an adapter" in full.stderr and "Traceback" not in full.stderr
    both = _cli("train", "--resume", str(run), "--data", qa_file, "--checkpoint", "checkpoint-2")
    assert both.returncode == 2 and "--checkpoint does not apply" in both.stderr
