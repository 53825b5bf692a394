"""Every architecture family through every stage, on a tiny random model of each (tests/families.py):
prepare → plan → train with protection → evaluate → merge → ONNX → GGUF → engines → serve (marked slow:
about half a minute a family); in the default run, each family's GGUF read back against its float model.

Each family's results go to test-artifacts/families.json; `python benchmarks/families_table.py` turns that
file into the README's family × stage table, so the table says what the last test run saw."""
from __future__ import annotations

import json
import os

import pytest
import torch

from families import FAMILIES
from ownllm.export.gguf import FAMILIES as GGUF_FAMILIES

ARTIFACTS = os.path.join(os.path.dirname(__file__), "..", "test-artifacts")


def _record(family: str, stage: str, result: str) -> None:
    """Add ``family``'s outcome at ``stage`` to test-artifacts/families.json (the README table's source)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, "families.json")
    table = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
    table.setdefault(family, {})[stage] = result
    with open(path, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=1, sort_keys=True)


def _logits(model, tok, text="The capital of France is Paris. 人工智能的未来是"):
    with torch.inference_mode():
        return model(**tok(text, return_tensors="pt")).logits.float()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_on_each_family(family, family_dirs, qa_file, tmp_path):
    from fastapi.testclient import TestClient

    from ownllm.evaluation.evaluate import evaluate
    from ownllm.export.export import export
    from ownllm.models.load import load_model, merge_adapter
    from ownllm.rundir import RunDir
    from ownllm.serving.app import ServeSettings, create_app
    from ownllm.training.config import TrainConfig
    from ownllm.training.data import prepare_for_training
    from ownllm.training.plan import plan_run
    from ownllm.training.train import train_run

    run = RunDir(tmp_path / "run")
    cfg = TrainConfig(model=family_dirs[family], data=qa_file, out=run.path, max_steps=3, batch_size=4,
                      precision="fp32", early_stopping_patience=0).validate()
    data = prepare_for_training(cfg.data, cfg, run)
    _record(family, "prepare", "pass")
    plan = plan_run(cfg, data, run, strict=False)
    trained = train_run(plan.settings, data, run)
    assert trained.summary["global_step"] == 3 and run.trained_output() == run.adapter_dir
    # all-linear LoRA found the family's projections, fused ones included (Phi-3's qkv_proj, gate_up_proj)
    adapted = {n.split(".")[-1] for n, m in trained.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted >= ({"qkv_proj", "gate_up_proj"} if family == "phi3" else {"q_proj", "k_proj", "v_proj", "up_proj"})
    assert trained.summary.get("protection", {}).get("replay_rows", 0) > 0  # replay + KL were on
    _record(family, "train (LoRA, protected)", "pass")
    result = evaluate(run, no_base=True, max_samples=2)
    assert run.eval_metrics()["headline"] == result["headline"]
    _record(family, "evaluate", "pass")

    tuned = load_model(run.path, device="cpu")
    before = _logits(tuned.model, tuned.tokenizer)
    merged, why = merge_adapter(tuned.model, tuned.tokenizer)  # raises when merged logits drift
    assert why is None and torch.allclose(before, _logits(merged, tuned.tokenizer), atol=1e-3)
    _record(family, "merge", "pass")
    onnx = export(run.path, "onnx", out=str(tmp_path / "onnx"))
    assert onnx["all_checks_passed"] and all(c["passed"] for c in onnx["checks"] if c["gates"])
    _record(family, "ONNX", "pass")
    if family in GGUF_FAMILIES:
        gguf = export(run.path, "gguf", out=str(tmp_path / "gguf"), quant="q8_0")
        assert gguf["all_checks_passed"] and all(c["passed"] for c in gguf["checks"] if c["gates"])
        _record(family, "GGUF", "pass (q8_0, read back by transformers)")
    else:
        _record(family, "GGUF", "refused with a message (transformers cannot read it back)")

    for engine in ("torch", "onnx"):
        model = tuned if engine == "torch" else load_model(str(tmp_path / "onnx"))
        client = TestClient(create_app(model, ServeSettings(model_id=family)), base_url="http://127.0.0.1")
        r = client.post("/v1/chat/completions", json={"model": family, "messages": [{"role": "user", "content": "What is the code for "
                                                                     "item number 3?"}], "max_tokens": 8})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
    _record(family, "serve (torch, onnxruntime)", "pass")


@pytest.mark.parametrize("family", sorted(GGUF_FAMILIES))
def test_each_familys_gguf_reads_back_as_its_float_model(family, family_dirs, tmp_path):
    """f16 written from the gguf package's tables with the family's quirks, read back by transformers'
    GGUF reader: the same logits up to f16 rounding (a tensor under a wrong name, a missing norm offset or
    a wrong row order moves them by whole logits: see the next test)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.export.gguf import write_gguf

    folder = family_dirs[family]
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    info = write_gguf(model, tok, str(tmp_path / "m.gguf"), "f16", name=family)
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32).eval()
    # llama.cpp writes Mistral as llama (the same network when it has no sliding window), and so do we
    assert type(back) is type(model) or (family, info["architecture"]) == ("mistral", "llama")
    a, b = _logits(model, tok), _logits(back, tok)
    assert float((a - b).abs().max()) < 0.05 and bool((a.argmax(-1) == b.argmax(-1)).all())


def test_a_wrong_family_quirk_shows_in_the_logits(family_dirs, tmp_path, monkeypatch):
    """Gemma's norm offset left out: the file still loads, and the check sees the difference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.export import gguf

    folder = family_dirs["gemma3_text"]
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    for name, family in (("right", gguf.FAMILIES["gemma3_text"]), ("wrong", gguf.Family("GEMMA3"))):
        monkeypatch.setitem(gguf.FAMILIES, "gemma3_text", family)
        gguf.write_gguf(model, tok, str(tmp_path / f"{name}.gguf"), "f16")
        back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f"{name}.gguf", dtype=torch.float32).eval()
        diff = float((_logits(model, tok) - _logits(back, tok)).abs().max())
        assert (diff < 0.05) == (name == "right"), (name, diff)


def test_llama3_rope_factors_are_the_ones_transformers_computes(family_dirs):
    """Llama 3.2's rope scaling goes into the GGUF as a rope_freqs tensor (llama.cpp reads it; transformers'
    GGUF reader does not): its values are the ratio of plain to scaled frequencies transformers uses."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from ownllm.export.gguf import _llama3_rope_factors

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072, rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    factors = torch.from_numpy(_llama3_rope_factors(cfg, 64))
    assert torch.allclose(plain / factors, scaled, rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 32.0  # high frequencies kept, low ones divided by the factor


def test_a_family_gguf_cannot_hold_is_refused_before_training(family_dirs, qa_file, tmp_path):
    from ownllm.errors import ConfigError
    from ownllm.export.export import export

    with pytest.raises(ConfigError, match="(?s)smollm3.*GGUF.*export --format merged"):
        export(family_dirs["smollm3"], "gguf", out=str(tmp_path / "g"))
    assert not os.path.exists(tmp_path / "g")


def test_plan_says_what_gguf_cannot_hold_before_any_training(family_dirs):
    import subprocess
    import sys

    from ownllm.export.export import export_notes

    assert export_notes(family_dirs["qwen3"]) == [] and export_notes("gemma3-270m") == []
    out = subprocess.run([sys.executable, "-m", "ownllm", "plan", "--model", family_dirs["smollm3"], "--examples", "100",
                          "--tokens-per-example", "50"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-1000:]
    assert "export: ownllm cannot write a 'smollm3' model to GGUF" in out.stdout and "--format merged" in out.stdout


def test_a_llama_3_2_style_model_with_rope_scaling_exports_to_gguf(tokenizer_dir, tmp_path):
    """Llama 3.2's rope scaling: the file holds llama.cpp's rope_freqs tensor and passes the usual checks."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from families import tiny_config
    from ownllm.export.export import export

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = tiny_config("llama", tok)
    cfg.max_position_embeddings = 16384
    cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "llama32")
    tok.save_pretrained(tmp_path / "llama32")
    manifest = export(str(tmp_path / "llama32"), "gguf", out=str(tmp_path / "g"), quant="f16")
    assert manifest["all_checks_passed"] and all(c["passed"] for c in manifest["checks"] if c["gates"])
    names = {t.name for t in GGUFReader(str(next((tmp_path / "g").glob("*.gguf")))).tensors}
    assert "rope_freqs.weight" in names


def test_a_gguf_transformers_cannot_read_says_its_architecture(tmp_path):
    import gguf
    import numpy as np

    from ownllm.errors import ModelNotFoundError
    from ownllm.models.load import load_model

    w = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "smollm3")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelNotFoundError, match="architecture 'smollm3'"):
        load_model(str(tmp_path / "other.gguf"))


def test_the_registry_says_how_each_architecture_was_tried_and_counts_qwen3s_wide_heads():
    from ownllm.models.registry import MODELS, TRIED
    from ownllm.planning.estimate import linear_params

    assert set(TRIED) == set(FAMILIES)  # `ownllm models` claims only what tests/test_families.py runs
    assert {s.architecture for s in MODELS.values()} <= set(TRIED)
    bases = [s for s in MODELS.values() if s.base]
    assert {"qwen3-0.6b-base", "llama-3.2-1b-base", "gemma3-270m", "mistral-7b-base"} <= {s.alias for s in bases}
    assert MODELS["qwen3-8b-base"].hub_id == "Qwen/Qwen3-8B-Base" and MODELS["gemma3-1b-base"].hub_id.endswith("-pt")
    # Qwen3-0.6B: 0.44B parameters outside the embeddings (its model card); heads of 128 > 1024 / 16
    assert abs(linear_params(MODELS["qwen3-0.6b"]) / 0.44e9 - 1) < 0.02
