"""Marked tests on the real embedded model (SmolLM2-135M): run with `make test-slow`."""
import json

import pytest

pytestmark = pytest.mark.slow


def test_embedded_model_answers_paris():
    import ownllm as deepseek

    answer = deepseek.load_model("smollm2-135m").generate(
        "Question: What is the capital of France?\nAnswer:", max_length=30, temperature=0)
    assert "Paris" in answer


def test_thirty_steps_lower_the_validation_loss(tmp_path):
    from ownllm.training.trainer import Trainer

    run = tmp_path / "support"
    summary = Trainer(model="smollm2-135m", train_dataset="examples/data/support_en.jsonl",
                      args={"output_dir": str(run), "max_steps": 30, "save_steps": 10, "eval_steps": 10,
                            "early_stopping_patience": 0, "eval_on_start": True}).train()
    evals = [json.loads(line)["eval_loss"] for line in open(run / "metrics.jsonl") if "eval_loss" in line]
    assert summary["global_step"] == 30 and len(evals) == 4  # before training, then every 10 steps
    assert evals[-1] < 0.5 * evals[0]


def test_guide_quantizer_snippet_keeps_the_answer():
    pytest.importorskip("bitsandbytes")
    from ownllm import Quantizer

    quantized_model = Quantizer(model="smollm2-135m", bits=4).quantize()
    assert quantized_model.report["size_change"] < -0.5
    assert "Paris" in quantized_model.generate("What is the capital of France?", max_new_tokens=20, temperature=0)


def test_embedded_model_exports_keep_the_answer(tmp_path):
    """ONNX greedy text equals torch's; q4_0 GGUF stays within its documented perplexity tolerance
    and still answers the question."""
    import torch
    from transformers import AutoModelForCausalLM

    from ownllm.export.formats import GGUF_PERPLEXITY_TOLERANCE, export
    from ownllm.models.load import load_model

    question = "What is the capital of France?"
    reference = load_model("smollm2-135m", device="cpu")
    expected = reference.generate(question, temperature=0, max_new_tokens=20)
    assert "Paris" in expected

    export("smollm2-135m", "onnx", str(tmp_path / "onnx"))
    assert load_model(str(tmp_path / "onnx" / "model.onnx")).generate(question, temperature=0,
                                                                       max_new_tokens=20) == expected

    m = export("smollm2-135m", "gguf", str(tmp_path / "gguf"), quant="q4_0")
    ppl = next(c for c in m["checks"] if "perplexity" in c["name"])
    assert m["all_checks_passed"] and ppl["measured"] <= GGUF_PERPLEXITY_TOLERANCE["q4_0"]
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gguf"), gguf_file="smollm2-135m-q4_0.gguf",
                                                 dtype=torch.float32)
    from ownllm.models.generation import OwnModel

    answer = OwnModel(model, reference.tokenizer).generate(question, temperature=0, max_new_tokens=20)
    assert "Paris" in answer
