"""Tiny random models of every architecture family ownllm supports, built in code.

Each has the family's own structure (q/k norms, fused qkv and gate_up projections, biases, tied or untied
embeddings, sliding windows, Gemma's norm offset and embedding scale) at 2 layers and width 64, with
non-zero biases and norm weights drawn at random, so that a tensor written under the wrong name, with the
wrong offset or in the wrong row order changes the logits. The tokenizer is SmolLM2's (byte-level BPE):
what is tested here is the architecture; templates are tested with each family's own template.
"""
from __future__ import annotations

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "smollm3")


def tiny_config(family: str, tok):
    """A 2-layer config of ``family`` for the tokenizer ``tok``; head sizes are the ones transformers'
    GGUF reader assumes for the family where it cannot read them back (Qwen3 128, Gemma 3 256)."""
    import transformers as tf

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, **ids)
    if family == "llama":
        return tf.LlamaConfig(tie_word_embeddings=True, **shape)
    if family == "mistral":
        return tf.MistralConfig(tie_word_embeddings=False, sliding_window=None, **shape)
    if family == "qwen2":  # q/k/v carry biases
        return tf.Qwen2Config(tie_word_embeddings=False, **shape)
    if family == "qwen3":  # q/k norms; head size 128 > width / heads
        return tf.Qwen3Config(tie_word_embeddings=True, head_dim=128, **dict(shape, num_attention_heads=2,
                                                                             num_key_value_heads=1))
    if family == "gemma3_text":  # norms stored as w - 1, embeddings scaled by sqrt(width), local attention
        return tf.Gemma3TextConfig(tie_word_embeddings=True, head_dim=256, sliding_window=8,
                                   **dict(shape, num_attention_heads=2, num_key_value_heads=1))
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return tf.Phi3Config(tie_word_embeddings=False, **shape)
    if family == "smollm3":  # no rotary embedding on every 4th layer
        return tf.SmolLM3Config(tie_word_embeddings=True, **shape)
    raise ValueError(family)


def build_tiny(family: str, tokenizer_dir: str, out: str, seed: int = 0) -> str:
    """Save a tiny random ``family`` model with the tokenizer of ``tokenizer_dir`` to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tok))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:  # Gemma's norms scale by 1 + w, the others by w
                p.normal_(0.0 if family == "gemma3_text" else 1.0, 0.2)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
