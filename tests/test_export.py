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

    from ownllm.export.formats import export
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
    from ownllm.export.formats import export
    from ownllm.training.trainer import Trainer

    run = tmp_path / "full"
    Trainer(model=tiny_model_dir, train_dataset=qa_file,
            args={"output_dir": str(run), "max_steps": 1, "precision": "fp32", "batch_size": 4, "method": "full"}).train()
    with pytest.raises(ConfigError, match="no adapter"):
        export(str(run), "adapter")
    assert export(str(run), "merged")["all_checks_passed"]


# -- ONNX ------------------------------------------------------------------------------------------
def test_onnx_exporter_runs_the_guide_snippet_and_generates_like_torch(lora_run, tmp_path):
    import ownllm as deepseek
    from ownllm.models.load import load_model

    model = deepseek.load_model(lora_run, device="cpu")
    exporter = deepseek.ONNXExporter(model)
    manifest = exporter.export(str(tmp_path / "model.onnx"))
    assert manifest["all_checks_passed"]
    diff = next(c for c in manifest["checks"] if "logit" in c["name"])
    assert 0 <= diff["measured"] <= 1e-3
    assert (tmp_path / "model.onnx.manifest.json").exists()
    assert type(model.model).__name__.startswith("Peft")  # the caller's model is not merged in place
    onnx = load_model(str(tmp_path / "model.onnx"))
    assert type(onnx.model).__name__ == "OnnxCausalLM"
    for prompt in ("Code of item 3?", "第五项的代码是什么？"):
        assert onnx.generate(prompt, temperature=0, max_new_tokens=12) == model.generate(prompt, temperature=0,
                                                                                          max_new_tokens=12)
    streamed = "".join(onnx.stream("Code of item 3?", temperature=0, max_new_tokens=12))
    assert streamed == model.generate("Code of item 3?", temperature=0, max_new_tokens=12)
    sampled = [onnx.generate("Code of item 3?", temperature=1.0, seed=s, max_new_tokens=8) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]
    with pytest.raises(ConfigError, match="already exists"):
        exporter.export(str(tmp_path / "model.onnx"))


def test_onnx_batch_with_left_padding_matches_torch(lora_run, tmp_path):
    from ownllm.export.formats import export
    from ownllm.models.onnx_runtime import OnnxCausalLM
    from ownllm.models.load import load_model

    m = export(lora_run, "onnx", str(tmp_path / "onnx"))
    assert {f["name"] for f in m["files"]} == {"model.onnx"} and (tmp_path / "onnx" / "manifest.json").exists()
    onnx = OnnxCausalLM.load(str(tmp_path / "onnx" / "model.onnx"))
    torch_model = load_model(lora_run, device="cpu")
    tok = torch_model.tokenizer
    tok.padding_side = "left"
    enc = tok(["Code of item 1?", "A much longer question about the code of item 12?"], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        expected = torch_model.model.generate(**enc, **kw, temperature=None, top_p=None, top_k=None)
    assert torch.equal(onnx.generate(**enc, **kw), expected)


def test_generate_cli_runs_an_onnx_export(lora_run, tmp_path):
    from ownllm.export.formats import export

    export(lora_run, "onnx", str(tmp_path / "onnx"))
    proc = subprocess.run([sys.executable, "-m", "ownllm", "generate", str(tmp_path / "onnx" / "model.onnx"),
                           "你好", "--temperature", "0", "--max-new-tokens", "5"], capture_output=True, text=True,
                          timeout=300)
    from ownllm.models.load import load_model

    expected = load_model(str(tmp_path / "onnx")).generate("你好", temperature=0, max_new_tokens=5)
    assert proc.returncode == 0 and proc.stdout == expected + "\n", proc.stderr[-2000:]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    proc = subprocess.run([sys.executable, "-m", "ownllm", "generate", str(bad), "hi"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "onnxruntime cannot load" in proc.stderr and "Traceback" not in proc.stderr


# -- GGUF ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0"])
def test_gguf_export_round_trips_through_transformers(lora_run, tmp_path, quant):
    import gguf

    from ownllm.export.formats import export

    out = tmp_path / quant
    m = export(lora_run, "gguf", str(out), quant=quant)
    assert m["all_checks_passed"] and m["quantization"] == quant and m["architecture"] == "llama"
    ppl = next(c for c in m["checks"] if "perplexity" in c["name"])
    assert m["perplexity_float"] > 1 and m["perplexity_gguf"] > 1 and ppl["measured"] == pytest.approx(
        m["perplexity_gguf"] / m["perplexity_float"] - 1, abs=1e-3)
    (name,) = [f["name"] for f in m["files"] if f["name"].endswith(".gguf")]
    reader = gguf.GGUFReader(str(out / name))
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    assert kinds["blk.0.ffn_down.weight"] == quant.upper()
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{name}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile and "TEMPLATE" in modelfile
    assert "ollama create" in (out / "README.md").read_text()


def test_gguf_writes_qwen2_with_biases(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from ownllm.export.formats import export

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-qwen2"
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    m = export(str(folder), "gguf", str(tmp_path / "out"), quant="f16")
    assert m["all_checks_passed"] and m["architecture"] == "qwen2"


def test_gguf_refuses_architectures_it_cannot_map_and_existing_output(tokenizer_dir, lora_run, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from ownllm.export.formats import export

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)).save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    with pytest.raises(ConfigError, match="llama, mistral, qwen2"):
        export(str(folder), "gguf", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export(lora_run, "gguf", str(tmp_path / "taken"))


def test_full_disk_leaves_no_half_export(lora_run, tmp_path, monkeypatch):
    import errno
    import os

    from ownllm.errors import DiskFullError
    from ownllm.export import gguf as gguf_export
    from ownllm.export.formats import export

    def full(model, tokenizer, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"GGUF partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_export, "write_gguf", full)
    with pytest.raises(DiskFullError):
        export(lora_run, "gguf", str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []
