"""A person's mistakes and expectations at the command line: one clear message (exit 2), or the obvious thing done."""
import json
import subprocess
import sys

from ownllm.config import TrainConfig, load_yaml


def _ownllm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ownllm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_number_written_without_a_dot_is_a_number(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nwarmup: 5\n")
    loaded = load_yaml(str(cfg), overrides=["weight_decay=1e-2", "max_steps=7"])
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
