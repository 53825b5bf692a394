"""A tuned model generates from its adapter folded into the weights: same answers, base-model cost."""
import hashlib
import os

import pytest
import torch


def _train(tiny_model_dir, qa_file, out, method):
    from ownllm.training.trainer import Trainer

    Trainer(model=tiny_model_dir, train_dataset=qa_file,
            args={"output_dir": str(out), "method": method, "max_steps": 3, "lr": 5e-3, "precision": "fp32",
                  "batch_size": 4, "protect": "off", "early_stopping_patience": 0}).train()
    return str(out)


def _hashes(folder):
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest() for f in sorted(os.listdir(folder))}


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_run_answers_as_the_adapter_does(tiny_model_dir, qa_file, tmp_path, method):
    from peft import PeftModel

    from ownllm.models.load import load_model

    run = _train(tiny_model_dir, qa_file, tmp_path / method, method)
    before = _hashes(os.path.join(run, "adapter"))
    plain, merged = load_model(run, device="cpu", merge=False), load_model(run, device="cpu")  # merged by default
    assert isinstance(plain.model, PeftModel) and not isinstance(merged.model, PeftModel)
    assert merged.merge_note is None
    enc = plain.tokenizer("What is the code for item number 3?", return_tensors="pt")
    with torch.inference_mode():
        diff = (plain.model(**enc).logits - merged.model(**enc).logits).abs().max()
    assert float(diff) < 1e-4
    question = "What is the code for item number 7?"
    assert plain.chat(question, max_new_tokens=8, temperature=0) == merged.chat(question, max_new_tokens=8, temperature=0)
    assert _hashes(os.path.join(run, "adapter")) == before  # merged in memory only


def test_prefix_tuning_stays_unmerged_and_says_why(tiny_model_dir, qa_file, tmp_path):
    from peft import PeftModel

    from ownllm.models.load import load_model

    run = _train(tiny_model_dir, qa_file, tmp_path / "prefix", "prefix")
    model = load_model(run, device="cpu")
    assert isinstance(model.model, PeftModel) and "prefix tuning" in model.merge_note


def test_a_merge_that_changes_the_logits_fails_loudly(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    from ownllm.errors import OwnLLMError
    from ownllm.models.load import load_model, merge_adapter

    run = _train(tiny_model_dir, qa_file, tmp_path / "broken", "lora")
    own = load_model(run, device="cpu", merge=False)
    real = own.model.base_model.merge_and_unload  # peft's LoraModel does the merge

    def broken(*args, **kwargs):
        merged = real(*args, **kwargs)
        with torch.no_grad():
            merged.get_output_embeddings().weight.mul_(1.5)
        return merged

    monkeypatch.setattr(own.model.base_model, "merge_and_unload", broken)
    with pytest.raises(OwnLLMError, match="merging the adapter changed the logits"):
        merge_adapter(own.model, own.tokenizer)


def test_the_report_card_times_decoding_at_equal_length(tiny_model_dir, monkeypatch):
    """A tuned model that answers longer is not 'slower': both models are timed on the same prompt at
    exactly the same number of new tokens, even when one would end its answer early."""
    from ownllm.evaluation.measure import DECODE_TIMING_TOKENS, ms_per_token
    from ownllm.models.load import load_model

    own = load_model(tiny_model_dir, device="cpu")
    lengths, real = [], own.model.generate

    def spy(**kwargs):
        out = real(**kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(own.model, "generate", spy)
    own.model.generation_config.eos_token_id = own.tokenizer.convert_tokens_to_ids("\n")  # it would stop at once
    assert ms_per_token(own.model, own.tokenizer, "hi") > 0
    assert lengths[1:] == [DECODE_TIMING_TOKENS] * 3  # after the warm-up, three timed runs of equal length
