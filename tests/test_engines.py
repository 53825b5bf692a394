"""`serve`/`chat --engine auto|torch|onnx|llamacpp` (ownllm.serving.engines): the ONNX export built once
into the run and reused while current, auto timing every verified engine and taking the fastest, bf16 only
when it gives fp32's answers, and a clear message for each mistake."""
from __future__ import annotations

import os
import time
from importlib.util import find_spec

import pytest

from conftest import train_shop_run


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    return train_shop_run(tiny_model_dir, tmp_path_factory.mktemp("engines") / "shop", protect="off")


@pytest.mark.skipif(find_spec("onnxruntime") is None, reason="onnxruntime not installed (pip install -e '.[onnx]')")
def test_onnx_engine_builds_the_runs_export_once_and_rebuilds_it_after_training(tiny_run):
    from ownllm.rundir import RunDir
    from ownllm.serving.engines import load_engine

    folder = os.path.join(tiny_run, "export", "onnx")
    model, record = load_engine(tiny_run, "onnx")
    manifest = os.path.join(folder, "manifest.json")
    assert record["engine"] == "onnx" and os.path.exists(os.path.join(folder, "model.onnx"))
    built = os.path.getmtime(manifest)
    question = "Code of item 3?"
    torch_model, _ = load_engine(tiny_run, "torch", dtype="fp32")
    assert model.chat(question, temperature=0, max_new_tokens=8) == torch_model.chat(question, temperature=0,
                                                                                      max_new_tokens=8)
    load_engine(tiny_run, "onnx")
    assert os.path.getmtime(manifest) == built  # reused
    later = time.time() + 5
    os.utime(RunDir(tiny_run).trained_output(), (later, later))  # the run was trained again after the export
    load_engine(tiny_run, "onnx")
    assert os.path.getmtime(manifest) > built  # rebuilt


def test_auto_times_every_verified_engine(tiny_run):
    from ownllm.serving.engines import describe, load_engine

    model, record = load_engine(tiny_run, "auto", dtype="fp32")
    speeds = record["tokens_per_second"]
    expected = ["torch"] + ["onnx"] * (find_spec("onnxruntime") is not None)
    assert sorted(speeds) == sorted(expected) and all(v > 0 for v in speeds.values())
    assert record["engine"] in describe(record) and "tokens/s measured" in describe(record)


@pytest.mark.skipif(find_spec("onnxruntime") is None, reason="onnxruntime not installed (pip install -e '.[onnx]')")
@pytest.mark.parametrize("faster", ["torch", "onnx"])
def test_auto_serves_the_engine_measured_fastest_at_the_servers_concurrency(tiny_run, monkeypatch, faster):
    from ownllm.models.onnx_runtime import OnnxCausalLM
    from ownllm.serving import engines

    asked = []

    def measured(own, concurrency=1):
        asked.append(concurrency)
        name = "onnx" if isinstance(own.model, OnnxCausalLM) else "torch"
        return 50.0 if name == faster else 10.0

    monkeypatch.setattr(engines, "tokens_per_second", measured)
    model, record = engines.load_engine(tiny_run, "auto", dtype="fp32", concurrency=4)
    assert record["engine"] == faster and asked == [4, 4]
    assert isinstance(model.model, OnnxCausalLM) is (faster == "onnx")
    assert "4 requests at once" in record["why"]


def test_timing_runs_the_requests_together_through_the_batcher(tiny, slowed, monkeypatch):
    """auto times what serve will run: concurrent requests share decode steps where the engine batches."""
    from ownllm.models import batching
    from ownllm.serving import engines

    made = []

    class Recording(batching.Batcher):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(batching, "Batcher", Recording)
    with slowed(tiny, 0.02):
        speed = engines.tokens_per_second(tiny, concurrency=3)
    assert speed > 0 and len(made) == 1 and made[0].max_batch == 3 and made[0].largest_batch >= 2
    assert engines.tokens_per_second(tiny) > 0 and len(made) == 1  # one request: no batcher


@pytest.mark.parametrize("passes", [True, False])
def test_bf16_serves_only_when_it_gives_fp32s_answers(tiny_model_dir, monkeypatch, passes):
    import torch

    from ownllm.export import common
    from ownllm.models.load import load_model
    from ownllm.serving import engines

    measured = common.Agreement(max_logit_diff=0.2, top1_agreement=1.0 if passes else 0.9,
                                confident_top1=1.0 if passes else 0.8, greedy_identical=passes,
                                greedy_matching_fraction=1.0 if passes else 0.25, same_tokens=True)
    monkeypatch.setattr(common, "agreement", lambda *a, **k: measured)
    own, record = engines._bf16_if_verified(load_model(tiny_model_dir, device="cpu"), tiny_model_dir)
    assert record["checks"]["passed"] is passes and record["dtype"] == ("bf16" if passes else "fp32")
    assert next(own.model.parameters()).dtype == (torch.bfloat16 if passes else torch.float32)


def test_the_bf16_check_compares_real_answers(tiny_model_dir):
    import copy

    import torch

    from ownllm.models.load import load_model
    from ownllm.serving.engines import _bf16_if_verified, verify

    own = load_model(tiny_model_dir, device="cpu")
    _, record = _bf16_if_verified(load_model(tiny_model_dir, device="cpu"), tiny_model_dir)
    found = record["checks"]["vs_torch_fp32"]
    assert found["max_logit_diff"] > 0  # bf16 rounds: a real bf16 copy was measured
    # random weights are never confident: nothing measured there, so bf16 is not taken on trust
    assert found["confident_top1"] is None and record["dtype"] == "fp32" and not record["checks"]["passed"]
    greedy = {"greedy_matching_fraction": 1.0}
    same = verify(own.model, copy.deepcopy(own.model), own.tokenizer, tiny_model_dir, greedy)
    assert same["passed"] and same["vs_torch_fp32"]["max_logit_diff"] == 0
    broken = copy.deepcopy(own.model)
    with torch.no_grad():
        broken.model.norm.weight.mul_(-1)  # every logit changes sign: the least likely token is now chosen
    failed = verify(own.model, broken, own.tokenizer, tiny_model_dir, greedy)
    assert not failed["passed"] and failed["vs_torch_fp32"]["greedy_matching_fraction"] < 1


def test_engine_mistakes_are_one_clear_message(tiny_model_dir, tiny_onnx_dir):
    from ownllm.errors import OwnLLMError
    from ownllm.serving.engines import load_engine

    with pytest.raises(OwnLLMError, match="unknown engine 'vllm'"):
        load_engine(tiny_model_dir, "vllm")
    with pytest.raises(OwnLLMError, match="only --engine onnx"):
        load_engine(os.path.join(tiny_onnx_dir, "model.onnx"), "torch")
    if find_spec("llama_cpp") is None:
        with pytest.raises(OwnLLMError, match="llama-cpp-python|llamacpp"):
            load_engine(tiny_model_dir, "llamacpp")


class _FakeLlama:
    """llama_cpp.Llama's surface that LlamaCppCausalLM uses (reset, eval, n_tokens, scores), computed by
    the tiny torch model over the whole context: the wrapper's decoding is checked without building
    llama.cpp (CI does not); with llama-cpp-python installed, the serve contract tests run it for real.
    ``favour``: a token id whose logit is raised everywhere, a runtime that reads the model wrong."""

    def __init__(self, model, favour: int | None = None):
        import numpy as np

        self.model, self.tokens, self.favour = model, [], favour
        self.scores = np.zeros((512, model.config.vocab_size), dtype=np.float32)

    @property
    def n_tokens(self):
        return len(self.tokens)

    def reset(self):
        self.tokens = []

    def eval(self, tokens):
        import torch

        self.tokens += list(tokens)
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([self.tokens])).logits[0].float().numpy()
        if self.favour is not None:
            logits[:, self.favour] += 100.0
        self.scores[:len(self.tokens)] = logits


def test_the_llamacpp_wrapper_decodes_as_torch_does(tiny):
    from ownllm.models.generation import OwnModel
    from ownllm.models.llamacpp_runtime import LlamaCppCausalLM

    wrapped = OwnModel(LlamaCppCausalLM(_FakeLlama(tiny.model), tiny.model.config, tiny.model.generation_config,
                                        "fake.gguf"), tiny.tokenizer)
    for question in ("hi", "你好，请介绍一下自己。"):
        assert wrapped.chat(question, temperature=0, max_new_tokens=8) == tiny.chat(question, temperature=0,
                                                                                    max_new_tokens=8)
    assert wrapped.chat("hi", temperature=1.0, seed=3, max_new_tokens=6) == tiny.chat("hi", temperature=1.0, seed=3,
                                                                                      max_new_tokens=6)
    stats = {}
    assert "".join(wrapped.stream("hi", chat=True, stats=stats, temperature=0, max_new_tokens=5)) == \
        tiny.chat("hi", temperature=0, max_new_tokens=5)
    assert stats["completion_tokens"] <= 5
    from ownllm.models.batching import can_batch
    from ownllm.serving.engines import LLAMACPP_THRESHOLDS, verify

    assert not can_batch(wrapped)  # one sequence at a time: serve gives it no batcher
    checks = verify(tiny.model, wrapped.model, tiny.tokenizer, "tiny", LLAMACPP_THRESHOLDS)  # the start-up check
    assert checks["passed"] and checks["vs_torch_fp32"]["max_logit_diff"] < 1e-4


@pytest.mark.parametrize("faithful", [True, False])
def test_llamacpp_serves_only_when_it_gives_torchs_answers(tiny_run, monkeypatch, tmp_path, faithful):
    """--engine llamacpp is refused, and auto leaves it out, when its start-up check fails."""
    import importlib.util

    import ownllm.models.llamacpp_runtime as runtime
    from ownllm.errors import ConfigError
    from ownllm.models.generation import OwnModel
    from ownllm.models.llamacpp_runtime import LlamaCppCausalLM
    from ownllm.serving import engines

    gguf_folder = tmp_path / "gguf"
    gguf_folder.mkdir()
    (gguf_folder / "model-f16.gguf").write_bytes(b"")

    def fake_load(path, reference):
        fake = _FakeLlama(reference.model, favour=None if faithful else 7)
        return OwnModel(LlamaCppCausalLM(fake, reference.model.config, reference.model.generation_config, path),
                        reference.tokenizer)

    monkeypatch.setattr(runtime, "load_llamacpp", fake_load)
    monkeypatch.setattr(engines, "require", lambda *a, **k: None)
    monkeypatch.setattr(engines, "_built", lambda source, fmt, quant="q8_0": str(gguf_folder) if fmt == "gguf"
                        else engines.export_folder(source, fmt))
    monkeypatch.setattr(engines, "find_spec", lambda name: object() if name == "llama_cpp"
                        else importlib.util.find_spec(name))
    if faithful:
        model, record = engines.load_engine(tiny_run, "llamacpp")
        assert record["engine"] == "llamacpp" and record["checks"]["passed"]
    else:
        with pytest.raises(ConfigError, match="llama.cpp does not give torch's answers"):
            engines.load_engine(tiny_run, "llamacpp")
    monkeypatch.setattr(engines, "tokens_per_second", lambda own, concurrency=1:
                        100.0 if isinstance(own.model, LlamaCppCausalLM) else 1.0)
    model, record = engines.load_engine(tiny_run, "auto", dtype="fp32")
    assert ("llamacpp" in record["tokens_per_second"]) is faithful
    assert record["considered"]["llamacpp"]["checks"]["passed"] is faithful
    assert (record["engine"] == "llamacpp") is faithful  # the fastest when it is in; never when it is not


def test_llamacpps_context_is_bounded(tiny, monkeypatch):
    """llama.cpp keeps every position's logits: the context is capped, and requests are told the cap."""
    import sys
    import types

    from transformers import LlamaConfig

    from ownllm.models.llamacpp_runtime import LLAMACPP_CONTEXT, load_llamacpp

    made = {}

    class Llama:
        def __init__(self, path, **kwargs):
            made.update(kwargs, path=path)

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama))
    config = LlamaConfig(max_position_embeddings=32768, vocab_size=151936)
    reference = types.SimpleNamespace(model=types.SimpleNamespace(config=config, generation_config=None),
                                      tokenizer=tiny.tokenizer)
    own = load_llamacpp("model.gguf", reference)
    assert made["n_ctx"] == LLAMACPP_CONTEXT < 32768 and own.context_length == LLAMACPP_CONTEXT
    assert config.max_position_embeddings == 32768  # the reference model's own config is left alone
