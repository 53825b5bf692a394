import json
import subprocess
import sys

import pytest

from ownllm.models.registry import MODELS
from ownllm.planning.estimate import Job, flops_per_token, linear_params, lora_params, memory_gb, train_time
from ownllm.planning.profiles import PROFILES, get_profile
from ownllm.planning.plan import parse_duration, plan


def test_lora_parameter_count_matches_peft():
    # peft reported 19,537,920 trainable parameters for r=64 on all linear layers of SmolLM2-135M
    assert lora_params(MODELS["smollm2-135m"], 64) == 19_537_920


def test_the_guides_7b_on_a_4090_claim():
    """20 epochs of a 7B LoRA over 100k × 256 tokens ≈ 1.4e19 FLOPs ≈ 8× a 4090's bf16 peak for 3 h."""
    shape = MODELS["deepseek/base-7b"]
    job = Job(method="lora", seq_len=256)
    flops = flops_per_token(shape, job) * 100_000 * 256 * 20
    assert flops == pytest.approx(1.4e19, rel=0.05)
    peak_hours = flops / (PROFILES["rtx 4090"].bf16_tflops * 1e12) / 3600
    assert peak_hours / 3 == pytest.approx(8, rel=0.1)
    p = plan(MODELS["deepseek/base-7b"], PROFILES["rtx 4090"], examples=100_000, tokens_per_example=256, epochs=20,
             budget_hours=3)
    assert p["fits_in_budget"] is False and 40 < p["hours"] < 80
    assert p["recommendation"]["epochs"] < 1 and p["recommendation"]["max_steps"] > 0


def test_memory_parts_by_hand():
    shape = MODELS["deepseek/base-7b"]
    m = memory_gb(shape, Job(method="lora", micro_batch=1, seq_len=256, lora_r=16))
    assert m["weights"] == pytest.approx(6.91e9 * 2 / 2**30, rel=0.01)              # bf16 weights
    assert m["trainable_and_optimizer"] == pytest.approx(lora_params(shape, 16) * 16 / 2**30, rel=0.01)
    assert m["logits"] == pytest.approx(256 * 102400 * 8 / 2**30, rel=0.01)         # fp32 logits + grad
    q = memory_gb(shape, Job(method="qlora", micro_batch=1, seq_len=256))
    assert q["weights"] == pytest.approx((linear_params(shape) * 0.52 + (6.91e9 - linear_params(shape)) * 2) / 2**30, rel=0.01)
    ckpt = memory_gb(shape, Job(method="lora", micro_batch=8, seq_len=512, gradient_checkpointing=True))
    full = memory_gb(shape, Job(method="lora", micro_batch=8, seq_len=512))
    assert ckpt["activations"] < full["activations"] / 5


@pytest.mark.parametrize("model,gpu,method,fits", [
    ("deepseek/base-7b", "rtx 4090", "full", False),      # 16 bytes/param ≈ 110 GB
    ("deepseek/base-7b", "h100", "full", False),
    ("qwen2.5-0.5b", "rtx 4090", "full", True),
    ("deepseek/base-7b", "rtx 3060", "qlora", True),       # with gradient checkpointing
    ("llama-3.1-70b", "a100 80gb", "qlora", True),
    ("llama-3.1-70b", "rtx 4090", "qlora", False),
])
def test_fit_boundaries(model, gpu, method, fits):
    p = plan(MODELS[model], PROFILES[gpu], examples=1000, tokens_per_example=256, epochs=1, method=method)
    rec = p["recommendation"]
    assert (rec["fits"] and rec["method"] == method) is fits


def test_time_scales_with_hardware_and_mfu():
    shape, job = MODELS["qwen2.5-1.5b"], Job()
    a = train_time(shape, job, 165.2, 1000, 200, 1, 0.4)
    b = train_time(shape, job, 989.0, 1000, 200, 1, 0.4)
    c = train_time(shape, job, 165.2, 1000, 200, 1, 0.2)
    assert a.hours / b.hours == pytest.approx(989 / 165.2)
    assert c.hours == pytest.approx(2 * a.hours)


def test_time_counts_replay_tokens_padding_and_a_fixed_cost_per_step():
    shape, job = MODELS["smollm2-135m"], Job(micro_batch=4)
    plain = train_time(shape, job, 0.4, 100, 200, 1, 0.4)
    # replay rows cost their own (shorter) tokens each epoch, not the domain rows' length, and one base
    # forward before training
    from ownllm.training.protect import DRIFT_ROWS

    short = train_time(shape, job, 0.4, 100, 200, 1, 0.4, replay_rows=50, replay_tokens=50, drift_rows=DRIFT_ROWS)
    long = train_time(shape, job, 0.4, 100, 200, 1, 0.4, replay_rows=50, replay_tokens=200, drift_rows=DRIFT_ROWS)
    assert plain.hours < short.hours < long.hours
    per_replay_token = (long.flops - short.flops) / (50 * 150)
    # and each validation scores DRIFT_ROWS of the 50 forward

    assert per_replay_token == pytest.approx(flops_per_token(shape, job) + 2 * shape.params * (1 + DRIFT_ROWS / 50))
    three = train_time(shape, job, 0.4, 100, 200, 3, 0.4, replay_rows=50, replay_tokens=200, val_fraction=0)
    once = train_time(shape, job, 0.4, 100, 200, 1, 0.4, replay_rows=50, replay_tokens=200, val_fraction=0)
    assert three.flops - 3 * once.flops == pytest.approx(-2 * 50 * 200 * 2 * shape.params)
    # rows of very different lengths in one batch compute their padding
    assert train_time(shape, job, 0.4, 100, 200, 1, 0.4, lengths=[200] * 100).flops == pytest.approx(plain.flops)
    # four rows of 20 and 380 tokens in one batch of 4: 1520 tokens computed for 800
    mixed = train_time(shape, job, 0.4, 100, 200, 1, 0.4, val_fraction=0, lengths=[20, 380] * 2)
    assert mixed.flops == pytest.approx(train_time(shape, job, 0.4, 100, 200, 1, 0.4, val_fraction=0).flops * 1520 / 800)
    # a fixed cost per micro-batch: 100 rows / 4 = 25 micro-batches an epoch
    fixed = train_time(shape, job, 0.4, 100, 200, 2, 0.4, step_seconds=0.5)
    assert (fixed.hours - train_time(shape, job, 0.4, 100, 200, 2, 0.4).hours) * 3600 == pytest.approx(25 * 2 * 0.5)


def test_calibration_fit_separates_the_fixed_cost_from_the_cost_per_token():
    from ownllm.training.calibrate import fit_line as _fit_line

    points = [(n, 0.5 + n * 0.003) for n in (256, 300, 512, 700, 800, 1000)]
    fixed, per_token = _fit_line(points)
    assert fixed == pytest.approx(0.5) and per_token == pytest.approx(0.003)
    # noise that would make the fixed cost negative: none, all of the time per token
    fixed, per_token = _fit_line([(100, 0.1), (1000, 2.0)])
    assert fixed == 0 and per_token == pytest.approx(2.1 / 1100)


def test_padding_estimate_follows_the_sampler_training_picks():
    from ownllm.data.report import length_histogram, lengths_from_histogram
    from ownllm.planning.estimate import computed_per_used_token, padding_waste

    assert padding_waste([64] * 40, 8) == 0 and computed_per_used_token([64] * 40, 8) == 1
    uneven = [20, 400, 35, 250, 60, 900, 15, 120] * 100
    # grouped by length (what training picks for such rows) wastes far less than random batches
    assert padding_waste(uneven, 8, grouped=True) < padding_waste(uneven, 8) / 3
    # ... except on a small dataset, where transformers' mega-batches are single batches
    assert padding_waste(uneven[:24], 8, grouped=True) == pytest.approx(padding_waste(uneven[:24], 8), rel=0.2)
    assert computed_per_used_token(uneven, 8) == pytest.approx(1 / (1 - padding_waste(uneven, 8, grouped=True)))
    back = lengths_from_histogram(length_histogram(uneven, 512))
    assert len(back) == len(uneven) and max(back) == 512


def test_durations_and_profiles():
    assert parse_duration("3h") == 3 and parse_duration("90m") == 1.5 and parse_duration("1h30m") == 1.5
    assert get_profile("4090").name == "RTX 4090"
    from ownllm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown GPU"):
        get_profile("RTX 9999")
    with pytest.raises(ConfigError):
        parse_duration("soon")


def test_plan_cli_json_and_matrix():
    out = subprocess.run([sys.executable, "-m", "ownllm", "plan", "--model", "deepseek/base-7b", "--gpu", "RTX 4090",
                          "--examples", "100000", "--tokens-per-example", "256", "--epochs", "20", "--time-budget",
                          "3h", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    for key in ("memory_gb", "fits_in_memory", "hours", "fits_in_budget", "epochs_in_budget", "tokens_per_second",
                "mfu_assumed", "cost_usd", "recommendation"):
        assert key in p
    out = subprocess.run([sys.executable, "-m", "ownllm", "plan", "--matrix"], capture_output=True, text=True)
    assert out.returncode == 0 and "llama-3.1-70b" in out.stdout and "| deepseek/base-7b | lora | RTX 4090 | yes" in out.stdout


def test_train_stops_at_the_time_budget(tiny_model_dir, qa_file, tmp_path):
    from ownllm.training.trainer import Trainer

    s = Trainer(model=tiny_model_dir, train_dataset=qa_file,
                args={"output_dir": str(tmp_path / "b"), "precision": "fp32", "max_steps": 500, "batch_size": 4,
                      "time_budget": "1s", "early_stopping_patience": 0}).train()
    assert s["stopped_because"] == "time_budget" and s["global_step"] < 500
    assert s["best_val_loss"] is not None  # evaluated at the stop
    assert s["time_budget"]["budget_hours"] == pytest.approx(1 / 3600)
    assert s["time_budget"]["predicted_hours"] > 0 and s["time_budget"]["actual_hours"] > 0
    assert (tmp_path / "b" / "checkpoints" / f"checkpoint-{s['global_step']}").exists()


def test_zero_stages_shard_memory_across_gpus_and_time_divides():
    from ownllm.planning.profiles import get_profile
    from ownllm.planning.plan import format_plan, plan, spec_for

    kw = dict(examples=100_000, tokens_per_example=256, epochs=1, method="full", micro_batch=1,
              gradient_checkpointing=True)
    a100 = get_profile("A100")
    one = plan(spec_for("qwen2.5-7b"), a100, **kw)
    eight = {z: plan(spec_for("qwen2.5-7b"), a100, gpus=8, zero_stage=z, **kw) for z in (0, 1, 2, 3)}
    mem = {z: p["memory_gb"] for z, p in eight.items()}
    assert mem[0]["total"] == one["memory_gb"]["total"]            # plain DDP: every device holds everything
    assert mem[0]["trainable_and_optimizer"] > mem[1]["trainable_and_optimizer"] > mem[2]["trainable_and_optimizer"]
    assert mem[3]["weights"] < mem[2]["weights"] or mem[3]["weights"] == 0
    assert not one["fits_in_memory"] and eight[3]["fits_in_memory"]  # a full 7B fine-tune needs ZeRO on 8 x 80 GB
    assert eight[3]["hours"] * 8 == pytest.approx(one["hours"], rel=1e-3)
    assert "ZeRO-3" in format_plan(eight[3]) and "8 data-parallel" in format_plan(eight[3])


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"), ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA L40", "L40"),
    ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA GeForce RTX 3060 Ti", "RTX 3060 Ti"), ("NVIDIA GeForce RTX 3060 Laptop GPU", "RTX 3060 Laptop"),
    ("NVIDIA GeForce RTX 3060", "RTX 3060"), ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("Tesla T4", "T4"),
    ("NVIDIA A10G", "A10G"), ("NVIDIA H200", "H200"), ("3060 Laptop", "RTX 3060 Laptop"), ("l40s", "L40S"),
])
def test_gpu_names_match_their_own_profile(name, expected):
    from ownllm.planning.profiles import match_gpu

    assert match_gpu(name).name == expected
    assert get_profile(name).name == expected


def test_an_unknown_gpu_is_planned_with_its_memory_and_a_conservative_peak(monkeypatch):
    from ownllm.planning import hardware, profiles

    def machine(name, memory):
        hw = hardware.Hardware("cpu", 2, 24, 20, 100, False, [hardware.GPU(name, memory, "8.9", True)])
        monkeypatch.setattr(hardware, "detect", lambda path=".": hw)
        return profiles.this_machine()

    assert match_gpu_is_none("NVIDIA RTX A6000")
    p = machine("NVIDIA RTX A6000", 47.5)
    assert p.memory_gb == 47.5 and "unknown GPU" in p.source
    assert p.bf16_tflops <= min(q.bf16_tflops for q in PROFILES.values() if q.bf16_tflops)
    a100 = machine("NVIDIA A100-SXM4-80GB", 79.3)
    assert a100.name == "A100 80GB" and a100.memory_gb == 79.3 and a100.bf16_tflops == 312.0


def match_gpu_is_none(name):
    from ownllm.planning.profiles import match_gpu

    return match_gpu(name) is None


def test_plan_reads_a_data_file_and_calibrate_refuses_another_machine(qa_file):
    ok = subprocess.run([sys.executable, "-m", "ownllm", "plan", "--data", qa_file, "--gpu", "RTX 4090", "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert json.loads(ok.stdout)["examples"] == 32  # 40 rows, the 80% train split `train --data` uses
    bad = subprocess.run([sys.executable, "-m", "ownllm", "plan", "--data", qa_file, "--gpu", "RTX 4090", "--calibrate"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "cannot stand in for RTX 4090" in bad.stderr and "Traceback" not in bad.stderr
