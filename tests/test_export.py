import json
import subprocess
import sys

import pytest
import torch

from ownllm.errors import ConfigError


@pytest.fixture(scope="module")
def lora_run(sharp_model_dir, tmp_path_factory):
    """A LoRA run on the trained (sharp) tiny model, trained until the adapter matters: the export checks
    must see a wrong layout, a dropped adapter or a wrong tokenizer."""
    from ownllm.training.trainer import Trainer

    rows = [{"messages": [{"role": "user", "content": f"Code of item {i}?"},
                          {"role": "assistant", "content": f"Item {i} has code {1000 + 7 * i}."}]} for i in range(40)]
    run = tmp_path_factory.mktemp("exp") / "run"
    Trainer(model=sharp_model_dir, train_dataset=rows,
            args={"output_dir": str(run), "max_steps": 40, "precision": "fp32", "batch_size": 4, "lr": 5e-3,
                  "protect": "off"}).train()
    return str(run)


def test_merged_export_reloads_with_plain_transformers(lora_run):
    from transformers import AutoModelForCausalLM

    from ownllm.export.export import export
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


def test_merged_export_carries_the_trained_chat_template_and_stop_tokens_for_vllm_and_tgi(tiny_model_dir, qa_file,
                                                                                         tmp_path):
    """vLLM and TGI read a Hugging Face folder's tokenizer_config.json chat template and generation_config.json
    eos_token_id: the export must give them the template the run trained with and the token that ends an answer."""
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    from ownllm.export.export import export
    from ownllm.models.templates import get_template
    from ownllm.training.trainer import Trainer

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.eos_token = "<|endoftext|>"  # a base whose end of sequence is not ChatML's end of turn
    tok.save_pretrained(base)
    run = tmp_path / "run"
    Trainer(model=str(base), train_dataset=qa_file,
            args={"output_dir": str(run), "max_steps": 1, "precision": "fp32", "batch_size": 4, "template": "chatml",
                  "protect": "off"}).train()
    assert export(str(run), "merged")["all_checks_passed"]
    folder = run / "export" / "merged"
    served = AutoTokenizer.from_pretrained(folder)
    chat = [{"role": "user", "content": "What is the code for item number 3?"}]
    trained = tok.apply_chat_template(chat, chat_template=get_template("chatml"), tokenize=False, add_generation_prompt=True)
    assert served.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == trained
    assert trained != tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)  # not the base's own
    ends = GenerationConfig.from_pretrained(folder).eos_token_id
    assert set(ends) == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}


def test_adapter_export_and_cli(lora_run, tmp_path):
    out = tmp_path / "adapter"
    proc = subprocess.run([sys.executable, "-m", "ownllm", "export", lora_run, "--format", "adapter", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pass" in proc.stdout and (out / "adapter_config.json").exists() and (out / "manifest.json").exists()


def test_full_run_has_no_adapter(tiny_model_dir, qa_file, tmp_path):
    from ownllm.export.export import export
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

    model = deepseek.load_model(lora_run, device="cpu")  # the adapter folded in, as for generating
    kind = type(model.model)
    exporter = deepseek.ONNXExporter(model)
    manifest = exporter.export(str(tmp_path / "model.onnx"))
    assert manifest["all_checks_passed"]
    diff = next(c for c in manifest["checks"] if "logit" in c["name"])
    assert 0 <= diff["measured"] <= 1e-3
    assert (tmp_path / "model.onnx.manifest.json").exists()
    assert type(model.model) is kind and kind.__name__ == "LlamaForCausalLM"  # the caller's model is left as it was
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
    from ownllm.export.export import export
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
    from ownllm.export.export import export

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

    from ownllm.export.export import export

    out = tmp_path / quant
    m = export(lora_run, "gguf", str(out), quant=quant)
    assert m["all_checks_passed"] and m["quantization"] == quant and m["architecture"] == "llama"
    # every check gates, except one with nothing to measure (random weights are never confident): it warns
    assert m["gating_checks"] == [c["name"] for c in m["checks"] if c["measured"] is not None]
    assert all(c["threshold"] for c in m["checks"])
    assert all(c["note"].startswith("not measured") and c["name"] in " ".join(m["warnings"])
               for c in m["checks"] if c["measured"] is None)
    try:
        import llama_cpp  # noqa: F401  (the optional extra .[llamacpp])
        assert any(r.startswith("llama.cpp") for r in m["checked_by"]) and m["llamacpp_top1_agreement"] >= 0.9
        assert any(c["name"].startswith("llama.cpp tokenizes") and c["passed"] for c in m["checks"])
    except ImportError:
        assert m["checked_by"] == ["transformers"]
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


def _reversed_vocabulary(original):
    def tokens(tokenizer_json, vocab_size):
        names, types = original(tokenizer_json, vocab_size)
        return names[:10] + names[10:1000][::-1] + names[1000:], types
    return tokens


@pytest.mark.parametrize("mistake", ["Q/K layout", "adapter dropped", "tokenizer"])
def test_gguf_checks_fail_a_broken_export(lora_run, sharp_model_dir, tmp_path, monkeypatch, mistake):
    """On a trained model every gate has teeth: each of these mistakes once passed on random weights."""
    from transformers import AutoModelForCausalLM

    from ownllm.errors import OwnLLMError
    from ownllm.export import common, gguf as gguf_export
    from ownllm.export.export import export

    if mistake == "Q/K layout":
        monkeypatch.setattr(gguf_export, "_permute", lambda w, heads: w)
    elif mistake == "adapter dropped":
        monkeypatch.setattr(common, "plain_copy", lambda own: AutoModelForCausalLM.from_pretrained(sharp_model_dir).eval())
    else:
        monkeypatch.setattr(gguf_export, "_tokens", _reversed_vocabulary(gguf_export._tokens))
    with pytest.raises(OwnLLMError, match="failed its checks") as failed:
        export(lora_run, "gguf", str(tmp_path / "out"), quant="q8_0")
    assert ("token ids" if mistake == "tokenizer" else "next-token choices") in str(failed.value)
    assert not (tmp_path / "out").exists()


def test_gguf_writes_qwen2_with_biases(family_dirs, tmp_path):
    """Qwen2's q/k/v biases (non-zero here: zero biases would pass whether written or not) reach the file,
    Q and K in llama.cpp's row order like their weights."""
    import numpy as np
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from ownllm.export.export import export

    folder = family_dirs["qwen2"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    attn = model.model.layers[0].self_attn
    assert float(attn.q_proj.bias.abs().min()) > 0
    m = export(folder, "gguf", str(tmp_path / "out"), quant="f16")
    assert m["all_checks_passed"] and m["architecture"] == "qwen2"
    tensors = {t.name: t for t in GGUFReader(str(next((tmp_path / "out").glob("*.gguf")))).tensors}
    for name, bias in (("attn_q", attn.q_proj.bias), ("attn_k", attn.k_proj.bias), ("attn_v", attn.v_proj.bias)):
        written = np.asarray(tensors[f"blk.0.{name}.bias"].data, dtype=np.float32).ravel()
        assert np.allclose(written, bias.detach().numpy(), atol=1e-3), name  # qwen2 keeps the HF row order


def test_gguf_refuses_architectures_it_cannot_map_and_existing_output(tokenizer_dir, lora_run, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from ownllm.export.export import export

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)).save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    with pytest.raises(ConfigError, match="(?s)'gpt2' model to GGUF.*gemma3_text, llama, mistral, phi3, qwen2, qwen3"):
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
    from ownllm.export.export import export

    def full(model, tokenizer, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"GGUF partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_export, "write_gguf", full)
    with pytest.raises(DiskFullError):
        export(lora_run, "gguf", str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def _ollama_prompt(modelfile: str, messages: list[dict]) -> str:
    """What Ollama builds from a Modelfile: SYSTEM becomes the first message when the conversation has
    none, then the Go template ranges over the messages (the subset our templates use)."""
    import re

    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', modelfile, re.S)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system.group(1)}] + messages
    before, rest = template.split("{{- range .Messages }}")
    body, after = rest.split("{{ end }}")
    assert "{{" not in before + after, "the template uses more than this test renders"
    return before + "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
                            for m in messages) + after


@pytest.mark.parametrize("run_system", [None, "You answer for the clinic."])
def test_ollama_modelfile_builds_the_prompt_transformers_builds(tokenizer_dir, run_system):
    """SmolLM2's template adds its own system prompt when a chat has none; the Modelfile must too, and
    a chat's own system message must appear once."""
    from transformers import AutoTokenizer

    from ownllm.export.gguf import modelfile

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = modelfile("m.gguf", tok, run_system)
    for chat in ([{"role": "user", "content": "你好"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]):
        given = chat if chat[0]["role"] == "system" or not run_system else [{"role": "system", "content": run_system}] + chat
        expected = tok.apply_chat_template(given, tokenize=False, add_generation_prompt=True)
        assert _ollama_prompt(text, chat) == expected
        assert _ollama_prompt(text, chat).count("<|im_start|>system") == 1


def test_a_share_with_nothing_to_count_is_not_measured_and_warns(tmp_path):
    """The confident-choices share was 1.0 when no position was confident, so it passed on random weights."""
    from ownllm.export.common import MIN_CONFIDENT_POSITIONS, confident_check, confident_share
    from ownllm.export.manifest import check, describe, status, write_manifest

    assert confident_share(0, 0) is None and confident_share(5, 5) is None
    assert confident_share(MIN_CONFIDENT_POSITIONS - 1, MIN_CONFIDENT_POSITIONS - 1) is None
    assert confident_share(MIN_CONFIDENT_POSITIONS, MIN_CONFIDENT_POSITIONS) == 1.0
    unmeasured = confident_check("confident choices", None, 3, 0.99)
    assert not unmeasured["passed"] and not unmeasured["gates"] and status(unmeasured) == "WARN"
    assert "not measured" in describe(unmeasured) and "only 3 position" in describe(unmeasured)
    failed = confident_check("confident choices", 0.5, 40, 0.99)
    assert status(failed) == "FAIL" and failed["gates"]
    (tmp_path / "model.bin").write_bytes(b"x")
    m = write_manifest(str(tmp_path), "gguf", str(tmp_path), [check("ppl", 0.01, at_most=0.02), unmeasured])
    assert m["all_checks_passed"] and m["gating_checks"] == ["ppl"] and len(m["warnings"]) == 1
    m = write_manifest(str(tmp_path), "gguf", str(tmp_path), [check("ppl", 0.01, at_most=0.02), failed])
    assert not m["all_checks_passed"]
