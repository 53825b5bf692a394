"""`serve`/`chat --engine auto|torch|onnx|llamacpp` (ownllm.serving.engines): the ONNX export built once
into the run and reused while current, auto timing every verified engine and taking the fastest, bf16 only
when it gives fp32's answers, and a clear message for each mistake."""
from __future__ import annotations

import os
import time
from importlib.util import find_spec

import pytest


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    from ownllm.training.trainer import Trainer

    rows = [{"messages": [{"role": "user", "content": f"Code of item {i}?"},
                          {"role": "assistant", "content": f"Item {i} has code {1000 + 7 * i}."}]} for i in range(20)]
    run = tmp_path_factory.mktemp("engines") / "shop"
    Trainer(model=tiny_model_dir, train_dataset=rows,
            args={"output_dir": str(run), "max_steps": 2, "precision": "fp32", "batch_size": 4, "protect": "off"}).train()
    return str(run)


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


def test_auto_times_every_verified_engine_and_serves_the_fastest(tiny_run):
    from ownllm.serving.engines import describe, load_engine

    model, record = load_engine(tiny_run, "auto", dtype="fp32")
    speeds = record["tokens_per_second"]
    expected = ["torch"] + ["onnx"] * (find_spec("onnxruntime") is not None)
    assert sorted(speeds) == sorted(expected) and all(v > 0 for v in speeds.values())
    assert record["engine"] == max(speeds, key=speeds.get)
    assert type(model.model).__name__ == ("OnnxCausalLM" if record["engine"] == "onnx" else "LlamaForCausalLM")
    assert record["engine"] in describe(record) and "tokens/s measured" in describe(record)


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
    from ownllm.models.load import load_model
    from ownllm.serving.engines import BF16_THRESHOLDS, _bf16_if_verified

    own, record = _bf16_if_verified(load_model(tiny_model_dir, device="cpu"), tiny_model_dir)
    found = record["checks"]["vs_torch_fp32"]
    assert found["max_logit_diff"] > 0  # bf16 rounds: the check measured a real bf16 copy
    assert record["checks"]["passed"] == all(found[k] >= v for k, v in BF16_THRESHOLDS.items())


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
    llama.cpp (CI does not); with llama-cpp-python installed, the serve contract tests run it for real."""

    def __init__(self, model):
        import numpy as np

        self.model, self.tokens = model, []
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
