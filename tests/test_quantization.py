import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("bits", [4, 8])
def test_quantizer_measures_and_round_trips(bits, tiny_model_dir, tmp_path):
    import ownllm as deepseek
    from ownllm.models.load import load_model

    q = deepseek.Quantizer(model=tiny_model_dir, bits=bits).quantize()
    r = q.report
    assert r["size_mb_after"] < r["size_mb_before"]
    assert r["perplexity_before"] > 0 and r["perplexity_after"] > 0 and r["perplexity_rows"] > 0
    assert isinstance(q.generate("Hello", max_new_tokens=3, temperature=0), str)
    out = q.save(str(tmp_path / "q"))
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["bits"] == bits
    again = load_model(out, device="cpu")
    ids = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        assert torch.allclose(q.model(input_ids=ids).logits, again.model(input_ids=ids).logits, atol=1e-4)


def test_quantize_cli_refuses_to_overwrite(tiny_model_dir, tmp_path):
    out = tmp_path / "q4"
    cmd = [sys.executable, "-m", "ownllm", "quantize", tiny_model_dir, "--bits", "4", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "MB →" in first.stdout and (out / "quantization.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = subprocess.run(cmd[:-4] + ["--bits", "3"], capture_output=True, text=True)
    assert bad.returncode == 2
