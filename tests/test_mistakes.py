"""A person's mistakes and expectations at the command line: one clear message (exit 2), or the obvious thing done."""
import json
import subprocess
import sys

from ownllm.config import load_yaml
from ownllm.training.config import TrainConfig


def _ownllm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ownllm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_number_written_without_a_dot_is_a_number(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nwarmup: 5\n")
    loaded = load_yaml(str(cfg), TrainConfig, overrides=["weight_decay=1e-2", "max_steps=7"])
    assert loaded.lr == 0.001 and loaded.weight_decay == 0.01 and loaded.max_steps == 7
    loaded.validate()
    bad = tmp_path / "b.yaml"
    bad.write_text("lr: fast\n")
    r = _ownllm("train", bad)
    assert r.returncode == 2 and "lr must be a number" in r.stderr and "Traceback" not in r.stderr


def test_out_pointing_at_a_file_is_refused(tmp_path, qa_file):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    for cmd in (("data", "prepare", qa_file, "--out", afile), ("train", "--data", qa_file, "--out", afile)):
        r = _ownllm(*cmd)
        assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert afile.read_text() == "mine"


def test_train_a_prepared_run_directory_and_eval_before_training(tmp_path, qa_file, tiny_model_dir):
    run = tmp_path / "run"
    assert _ownllm("data", "prepare", qa_file, "--out", run, "--model", tiny_model_dir).returncode == 0
    early = _ownllm("eval", run)
    assert early.returncode == 2 and "no trained model yet" in early.stderr and f"ownllm train {run}" in early.stderr
    r = _ownllm("train", run, "--model", tiny_model_dir, "--max-steps", "2", "--precision", "fp32", "--protect", "off")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["run_dir"] == str(run)
    assert TrainConfig().protect == "default"  # what a person gets without the flag
    not_a_run = _ownllm("train", tmp_path)
    assert not_a_run.returncode == 2 and "prepared run directory" in not_a_run.stderr


def test_a_gbk_terms_file_is_read_before_any_model_loads(tmp_path):
    from ownllm.data.formats import read_text_file

    terms = tmp_path / "terms.txt"
    terms.write_bytes("# 医学术语\n阿莫西林\n布洛芬缓释胶囊\n".encode("gbk"))
    TrainConfig(add_terms=str(terms)).validate()
    assert read_text_file(str(terms)).splitlines()[1:] == ["阿莫西林", "布洛芬缓释胶囊"]


def test_every_answer_truncated_away_says_what_length_is_needed(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": "Please describe, in detail, the warranty terms of product " + str(i)},
                          {"role": "assistant", "content": f"Two years for product {i}."}]} for i in range(20)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _ownllm("train", "--data", data, "--model", tiny_model_dir, "--max-seq-len", "20", "--max-steps", "1",
                "--protect", "off", "--out", tmp_path / "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert "truncated to nothing to learn at --max-seq-len 20" in r.stderr and "keeps 95%" in r.stderr


def test_out_equal_to_the_input_folder_does_not_read_its_own_output(tmp_path, tokenizer_dir):
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = [{"question": f"What is the code of item {i}?", "answer": f"Item {i} has code {100 + i}."} for i in range(30)]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for _ in range(2):
        r = _ownllm("data", "prepare", folder, "--out", folder, "--model", tokenizer_dir)
        assert r.returncode == 0, r.stderr[-1500:]
        report = json.loads((folder / "data" / "report.json").read_text())
        assert report["total_rows"] == 30 and report["kept_rows"] == 30
    assert report["skipped_files"] and all("/data/" in f for f in report["skipped_files"])


def test_the_order_rule_and_its_message_agree(tmp_path, tokenizer_dir):
    from ownllm.data.prepare import prepare_dataset
    from ownllm.data.validate import REASONS

    ok = {"messages": [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Are you there?"},
                       {"role": "assistant", "content": "Yes."}]}
    late_system = {"messages": [{"role": "user", "content": "Hi."}, {"role": "system", "content": "Be brief."},
                                {"role": "assistant", "content": "Yes."}]}
    good = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
            for i in range(20)]
    r = prepare_dataset(good + [ok, late_system], model=tokenizer_dir, split="1,0,0")
    assert r.report["kept_rows"] == 21 and r.report["rejected_by_reason"] == {"bad_order": 1}
    assert "does not alternate" not in REASONS["bad_order"] and "system message" in REASONS["bad_order"]
