import json
import subprocess
import sys

import pytest
import torch

from ownllm.errors import ConfigError


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from ownllm.training.trainer import Trainer

    rows = [{"messages": [{"role": "user", "content": f"Code of item {i}?"},
                          {"role": "assistant", "content": f"Item {i} has code {1000 + 7 * i}."}]} for i in range(40)]
    run = tmp_path_factory.mktemp("exp") / "run"
    Trainer(model=tiny_model_dir, train_dataset=rows,
            args={"output_dir": str(run), "max_steps": 3, "precision": "fp32", "batch_size": 4, "lr": 5e-3}).train()
    return str(run)


def test_merged_export_reloads_with_plain_transformers(lora_run):
    from transformers import AutoModelForCausalLM

    from ownllm.export.merge import export
    from ownllm.models.load import load_model

    m = export(lora_run, "merged")
    assert m["all_checks_passed"] and {c["name"] for c in m["checks"]}
    assert any(f["name"] == "model.safetensors" and len(f["sha256"]) == 64 for f in m["files"])
    saved = json.loads(open(f"{lora_run}/export/merged/manifest.json").read())
    assert saved["config_sha256"] and saved["checks"] == m["checks"]
    plain = AutoModelForCausalLM.from_pretrained(f"{lora_run}/export/merged")
    tuned = load_model(lora_run, device="cpu").model
    ids = torch.tensor([[1, 7, 42, 99]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, tuned(input_ids=ids).logits, atol=1e-3)
    with pytest.raises(ConfigError, match="already exists"):
        export(lora_run, "merged")


def test_adapter_export_and_cli(lora_run, tmp_path):
    out = tmp_path / "adapter"
    proc = subprocess.run([sys.executable, "-m", "ownllm", "export", lora_run, "--format", "adapter", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pass" in proc.stdout and (out / "adapter_config.json").exists() and (out / "manifest.json").exists()


def test_full_run_has_no_adapter(tiny_model_dir, qa_file, tmp_path):
    from ownllm.export.merge import export
    from ownllm.training.trainer import Trainer

    run = tmp_path / "full"
    Trainer(model=tiny_model_dir, train_dataset=qa_file,
            args={"output_dir": str(run), "max_steps": 1, "precision": "fp32", "batch_size": 4, "method": "full"}).train()
    with pytest.raises(ConfigError, match="no adapter"):
        export(str(run), "adapter")
    assert export(str(run), "merged")["all_checks_passed"]
