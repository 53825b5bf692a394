"""Several processes on this CPU (torchrun + gloo): the same loss trajectory as one process with the
same effective batch, only the main process writes, exact resume from a 2-process checkpoint, and
the shipped distributed configs parse."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml


def _losses(run) -> dict[int, float]:
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _train(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ownllm", "train", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One process with micro-batch 4, and two processes with micro-batch 2: the same 4 rows per step."""
    tmp = tmp_path_factory.mktemp("dist")
    rows = [{"messages": [{"role": "user", "content": f"What is the code for item number {i}?"},
                          {"role": "assistant", "content": f"The code for item {i} is {1000 + 7 * i}."}]}
            for i in range(40)]
    (tmp / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base = {"data": str(tmp / "qa.jsonl"), "model": tiny_model_dir, "max_steps": 6, "precision": "fp32",
            "lora_dropout": 0.0, "logging_steps": 1, "lr": 1e-3, "save_steps": 3, "early_stopping_patience": 0,
            "grad_accum": 1, "hf_args": {"train_sampling_strategy": "random"}}
    for name, batch in (("one", 4), ("two", 2)):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump({**base, "out": str(tmp / name), "batch_size": batch}))
    _train([str(tmp / "one.yaml")], tmp)
    _train([str(tmp / "two.yaml"), "--num-processes", "2"], tmp)
    return tmp


def test_two_processes_follow_the_single_process_loss(runs):
    one, two = _losses(runs / "one"), _losses(runs / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
    # stated tolerance: 1% (the all-reduce sums gradients in another order, and Adam's first steps
    # turn near-zero gradients into full-size updates, so float noise shows in the loss)
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-2), step
    # it learns: the domain's validation loss falls (the training loss mixes in the replayed rows' KL, zero at the
    # first step and growing, so its first and last steps do not compare)
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, (runs / "one" / "metrics.jsonl").read_text()
                                                        .splitlines()) if "eval_loss" in r}
    assert evals[6] < evals[3]
    s1 = json.loads((runs / "one" / "train_summary.json").read_text())
    s2 = json.loads((runs / "two" / "train_summary.json").read_text())
    assert s2["processes"] == 2 and s2["effective_batch"] == s1["effective_batch"] == 4
    assert s2["train_tokens"] == s1["train_tokens"]  # the data is sharded, not duplicated


def test_only_the_main_process_writes(runs):
    lines = (runs / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((runs / "one" / "metrics.jsonl").read_text().splitlines())
    ckpt = runs / "two" / "checkpoints" / "checkpoint-3"
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()
    assert not (runs / "two" / "checkpoints" / ".staging").exists()
    assert (runs / "two" / "adapter" / "adapter_model.safetensors").exists() and (runs / "two" / "loss.png").exists()


def test_two_process_run_resumes_exactly_from_its_checkpoint(runs):
    import shutil

    resumed = runs / "two-resumed"
    shutil.copytree(runs / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-6")
    cfg = yaml.safe_load((resumed / "config.yaml").read_text())
    cfg["out"] = str(resumed)
    (resumed / "config.yaml").write_text(yaml.safe_dump(cfg))
    (resumed / "metrics.jsonl").unlink()
    _train(["--resume", str(resumed), "--checkpoint", "checkpoint-3", "--num-processes", "2"], runs)
    after = _losses(resumed)
    original = _losses(runs / "two")
    assert sorted(after) == [4, 5, 6]
    for step in after:
        assert after[step] == pytest.approx(original[step], rel=1e-4), step


def test_launch_flags_are_checked():
    proc = subprocess.run([sys.executable, "-m", "ownllm", "train", "--data", "x.jsonl", "--num-machines", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--main-process-ip" in proc.stderr and "Traceback" not in proc.stderr


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "examples", "distributed")


@pytest.mark.parametrize("name,kind", [("ddp.yaml", "MULTI_GPU"), ("fsdp_lora.yaml", "FSDP"),
                                       ("fsdp_qlora.yaml", "FSDP"), ("multinode.yaml", "DEEPSPEED")])
def test_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(os.path.join(CONFIGS, name))
    assert cfg.distributed_type.name == kind and cfg.num_processes >= 2
    if name == "multinode.yaml":
        assert cfg.num_machines == 2 and os.path.exists(
            os.path.join(CONFIGS, "..", "..", cfg.deepspeed_config["deepspeed_config_file"]))


@pytest.mark.parametrize("name,stage,offload", [("ds_zero2.json", 2, False), ("ds_zero3_offload.json", 3, True)])
def test_shipped_deepspeed_configs_parse(name, stage, offload):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    cfg = HfDeepSpeedConfig(os.path.join(CONFIGS, name))
    assert cfg.get_value("zero_optimization.stage") == stage and cfg.is_offload() == offload


@pytest.mark.slow
def test_deepspeed_zero2_two_processes_train_and_resume_exactly(runs, tiny_model_dir):
    """DeepSpeed's own engine (ZeRO-2, the shipped config) on two CPU processes; .ci/run installs
    deepspeed where it can, else this skips."""
    pytest.importorskip("deepspeed", reason="pip install deepspeed (.ci/run tries)")
    import shutil

    run = runs / "zero2"
    _train(["--data", str(runs / "qa.jsonl"), "--model", tiny_model_dir, "--max-steps", "4", "--precision", "fp32",
            "--logging-steps", "1", "--save-steps", "2", "--early-stopping-patience", "0", "--lora-dropout", "0",
            "--out", str(run), "--deepspeed", os.path.join(CONFIGS, "ds_zero2.json"), "--num-processes", "2"], runs)
    assert (run / "checkpoints" / "checkpoint-2" / "global_step2").is_dir()  # ZeRO's sharded optimizer state
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    resumed = runs / "zero2-resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    (resumed / "metrics.jsonl").unlink()
    cfg = yaml.safe_load((resumed / "config.yaml").read_text())
    cfg["out"] = str(resumed)
    (resumed / "config.yaml").write_text(yaml.safe_dump(cfg))
    _train(["--resume", str(resumed), "--checkpoint", "checkpoint-2", "--num-processes", "2"], runs)
    original, after = _losses(run), _losses(resumed)
    assert sorted(after) == [3, 4]
    for step in after:
        assert after[step] == pytest.approx(original[step], rel=1e-4)
