"""Facts about a decoder's shape that several runtimes and writers need."""
from __future__ import annotations


def kv_layout(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a decoder config (grouped-query attention included)."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv, head_dim
