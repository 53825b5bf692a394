import json
import os

import pytest

from ownllm.evaluation import metrics as M
from ownllm.evaluation.report import to_html
from ownllm.rundir import RunDir


def test_normalisation_and_simple_metrics():
    assert M.exact_match("Paris.", "paris") == 1.0
    assert M.contains("The capital is PARIS!", "Paris") == 1.0
    assert M.contains("Ｐａｒｉｓ，法国", "paris") == 1.0  # full-width letters
    assert M.exact_match("London", "Paris") == 0.0


def test_token_f1_and_rouge_known_values():
    # 2 of 3 predicted words match 2 of 4 reference words: P=2/3, R=1/2, F1=4/7
    assert M.token_f1("the cat sat", "the cat is here") == pytest.approx(4 / 7)
    # Chinese by characters: LCS("今天天气好", "今天天气不错") = 4 → P=4/5, R=4/6
    assert M.rouge_l("今天天气好", "今天天气不错") == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert M.tokens("我爱 NLP") == ["我", "爱", "nlp"]


def test_bleu_uses_sacrebleu():
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert M.bleu(["今天天气很好"], ["今天天气很好"]) == pytest.approx(100.0)
    assert M.bleu(["a b c d"], ["w x y z"]) < 1


def test_multiple_choice_parsing():
    assert M.parse_choice("B. because ...") == "B"
    assert M.parse_choice("答案：C") == "C"
    assert M.parse_choice("(D)") == "D"
    assert M.parse_choice("I think the answer is A") == "A"
    agg = M.aggregate(["A", "the answer is C", "B"], ["A", "B", "B"])
    assert agg["choice_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert "choice_accuracy" not in M.aggregate(["x"], ["a long free-text answer"])


def test_html_report_escapes_model_text():
    result = {"headline": "<b>h</b>", "samples": 1,
              "tuned": {k: 0.5 for k in ("contains", "exact_match", "token_f1", "rouge_l", "bleu", "test_loss",
                                         "perplexity", "general_perplexity", "seconds_per_answer", "ms_per_token")}}
    samples = [{"prompt": "<img src=x onerror=alert(1)>", "reference": "ok", "tuned": "<script>alert(1)</script>",
                "tuned_scores": {}}]
    page = to_html("/nonexistent", result, samples)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_eval_end_to_end_on_a_tiny_run(tiny_model_dir, qa_file, tmp_path):
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.training.trainer import Trainer

    run = tmp_path / "run"
    Trainer(model=tiny_model_dir, train_dataset=qa_file,
            args={"output_dir": str(run), "max_steps": 3, "precision": "fp32", "batch_size": 4}).train()
    result = evaluate(str(run), max_new_tokens=8)
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    for side in ("base", "tuned"):
        for key in ("test_loss", "perplexity", "exact_match", "contains", "token_f1", "rouge_l", "bleu",
                    "seconds_per_answer"):
            assert key in saved[side]
    assert saved["samples"] == result["samples"] > 0
    assert (run / "eval" / "report.md").exists() and (run / "eval" / "report.html").exists()
    lines = (run / "eval" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == result["samples"] and {"prompt", "reference", "base", "tuned"} <= set(json.loads(lines[0]))
    # what is scored is the test split: its questions and answers, every one of them
    test = [json.loads(line) for line in (run / "data" / "test.jsonl").read_text().splitlines()]
    answers = sorted(r["messages"][-1]["content"] for r in test)
    assert sorted(json.loads(line)["reference"] for line in lines) == answers and result["samples"] == len(test)
    assert saved["tuned"]["test_loss"] > 0 and "val_loss" not in saved["tuned"]


def test_runs_evaluated_before_the_rename_still_read(tmp_path):
    """eval/metrics.json used to call the test-split loss val_loss: the studio and compare read it as test_loss."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"base": {"val_loss": 2.0}, "tuned": {"val_loss": 1.0}}))
    old = RunDir(tmp_path).eval_metrics()
    assert old["base"] == {"test_loss": 2.0} and old["tuned"] == {"test_loss": 1.0}
    assert RunDir(tmp_path / "nothing").eval_metrics() is None


def test_quickstart_and_compare_on_a_tiny_model(tiny_model_dir, qa_file, tmp_path):
    import subprocess
    import sys

    runs = []
    for method in ("lora", "dora"):
        run = tmp_path / method
        proc = subprocess.run([sys.executable, "-m", "ownllm", "quickstart", "--data", qa_file, "--model", tiny_model_dir,
                               "--out", str(run), "--method", method, "--max-steps", "2", "--precision", "fp32",
                               "--max-samples", "3"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "held-out questions" in proc.stdout and (run / "eval" / "report.html").exists()
        runs.append(str(run))
    proc = subprocess.run([sys.executable, "-m", "ownllm", "compare", *runs], capture_output=True, text=True)
    assert proc.returncode == 0 and "train_method" in proc.stdout and "dora" in proc.stdout


def test_text_only_run_gets_perplexity_report(tiny_model_dir, tmp_path):
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.training.trainer import Trainer

    src = tmp_path / "notes.txt"
    src.write_text("\n\n".join(f"Note {i}: the ward round at {i % 12 + 1} o'clock found patient {i} stable. " * 8
                               for i in range(60)), encoding="utf-8")  # 11 rows: from 10 up a test row is kept
    run = tmp_path / "run"
    Trainer(model=tiny_model_dir, train_dataset=str(src),
            args={"output_dir": str(run), "max_steps": 2, "precision": "fp32", "batch_size": 4}).train()
    result = evaluate(str(run))
    assert "perplexity" in result["tuned"] and "contains" not in result["tuned"]
    assert result["headline"].startswith("perplexity") and (run / "eval" / "report.html").exists()
    # 8 rows (40 notes): every row trains, and evaluating says there is no test split and what to do
    few = tmp_path / "few.txt"
    few.write_text(src.read_text(encoding="utf-8")[: len(src.read_text(encoding="utf-8")) * 2 // 3], encoding="utf-8")
    small = tmp_path / "small"
    Trainer(model=tiny_model_dir, train_dataset=str(few),
            args={"output_dir": str(small), "max_steps": 1, "precision": "fp32", "batch_size": 4}).train()
    from ownllm.errors import DataError

    with pytest.raises(DataError, match="has no test rows: .* nothing is held out") as e:
        evaluate(str(small))
    assert "--data" in e.value.hint


def test_full_fine_tune_run_evaluates(tiny_model_dir, qa_file, tmp_path):
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.training.trainer import Trainer

    run = tmp_path / "full"
    Trainer(model=tiny_model_dir, train_dataset=qa_file,
            args={"output_dir": str(run), "max_steps": 2, "precision": "fp32", "batch_size": 4, "method": "full"}).train()
    assert (run / "model" / "config.json").exists()
    assert evaluate(str(run), max_new_tokens=4)["tuned"]["test_loss"] > 0


@pytest.mark.parametrize("pred,ref,expected", [
    ("I do not know", "no", 0.0),              # a word, not letters inside other words
    ("within 45 days", "4", 0.0),              # numbers as numbers
    ("Refunds within 45 days.", "45", 1.0),
    ("There are seven days in a week.", "7", 1.0),
    ("A, B, C or D", "B", 0.0),                 # naming every choice is not choosing one
    ("B. The second option.", "B", 1.0),
    ("咨询请拨打热线，周一到周五。", "周一到周五", 1.0),
    ("The return window is 30 days.", "30 days", 1.0),
    ("The return window is 300 days.", "30 days", 0.0),
    ("霖墨科技的客服电话是471-303-9928。", "471-303-9928", 1.0),   # Latin text inside Chinese
    ("霖墨科技的客服电话是471-303-99280。", "471-303-9928", 0.0),
    ("每天早上9:10开门", "9:10", 1.0),
    ("鸣岚健身房的年费是98元。", "98", 1.0),                    # a number inside Chinese text
    ("鸣岚健身房的年费是980元。", "98", 0.0),
    ("保修期是47个月", "4", 0.0),
    ("客服邮箱是xlura@zenbra.com", "lura@zenbra.com", 0.0),
])
def test_contains_matches_words_numbers_and_one_choice(pred, ref, expected):
    from ownllm.evaluation.metrics import contains

    assert contains(pred, ref) == expected


def test_headline_says_when_test_answers_were_trained_on():
    from ownllm.evaluation.evaluate import _answer_overlap, headline

    import json as _json
    import tempfile

    with tempfile.TemporaryDirectory() as run:
        os.makedirs(os.path.join(run, "data"))
        with open(os.path.join(run, "data", "train.jsonl"), "w") as f:
            f.write(_json.dumps({"messages": [{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": "Refunds take 5 days."}]}) + "\n")
        samples = [{"reference": "Refunds take 5 days.", "base_scores": {"contains": 0.0}, "tuned_scores": {"contains": 1.0}},
                   {"reference": "Call us on Monday.", "base_scores": {"contains": 0.0}, "tuned_scores": {"contains": 0.0}}]
        overlap = _answer_overlap(RunDir(run), samples)
    assert overlap["answers_seen_in_training"] == {"seen": 1, "questions": 2}
    assert overlap["by_overlap"] == {"seen": {"base": 0.0, "tuned": 1.0}, "unseen": {"base": 0.0, "tuned": 0.0}}
    side = {"contains": 0.5, "token_f1": 0.5, "test_loss": 1.0, "general_perplexity": 0}
    text = headline({"samples": 2, "base": side, "tuned": side, **overlap})
    assert "1 of 2 reference answers appear word for word in training" in text and "100% / 0%" in text
    choice = {**side, "choice_accuracy": 0.75}
    assert headline({"samples": 4, "base": choice, "tuned": choice}).startswith("choice accuracy 75% → 75%")
