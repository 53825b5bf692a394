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
