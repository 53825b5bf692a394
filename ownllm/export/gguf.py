"""GGUF for llama.cpp and Ollama, written with the ``gguf`` package (llama.cpp's own Python library).

Llama-family models (the embedded default included) and Qwen2 are mapped; the tokenizer must be a
byte-level BPE (GPT-2 style: SmolLM, Qwen2, Llama 3). Weights are stored as f16, q8_0 or q4_0;
norms stay f32. The file is checked by loading it back with transformers' GGUF reader.
"""
from __future__ import annotations

import json
import os
import tempfile

from ownllm.errors import ConfigError
from ownllm.models.architecture import kv_layout

# model_type → llama.cpp architecture name; Llama-family configs share Llama's tensors and hyper-parameters
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
QUANTS = ("f16", "q8_0", "q4_0")


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def check_architecture(config) -> str:
    arch = ARCHITECTURES.get(getattr(config, "model_type", None))
    if arch is None:
        raise ConfigError(f"ownllm cannot write a '{config.model_type}' model to GGUF",
                          hint=f"architectures it can write: {supported()}; for others export --format merged "
                               "and use llama.cpp's convert_hf_to_gguf.py")
    return arch


def _pre_tokenizer(config, tokenizer, source_gguf: str | None) -> str:
    """llama.cpp's name for the pre-tokenizer: the source GGUF's own, else the known family's."""
    if source_gguf:
        from gguf import GGUFReader

        field = GGUFReader(source_gguf).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return field.contents()
    if config.model_type == "qwen2":
        return "qwen2"
    if len(tokenizer) >= 128000 and "<|begin_of_text|>" in tokenizer.get_vocab():
        return "llama-bpe"
    if tokenizer.get_vocab().get("<|im_start|>") == 1 and len(tokenizer) == 49152:
        return "smollm"
    return "default"


def _permute(w, heads: int):
    """Q/K rows from the Hugging Face rotary layout back to Meta's interleaved one, which llama.cpp's
    llama architecture expects (transformers' GGUF reader undoes this when it loads)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokens(tokenizer_json: dict, vocab_size: int):
    import gguf

    model = tokenizer_json["model"]
    if model.get("type") != "BPE" or (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        raise ConfigError("GGUF export supports byte-level BPE tokenizers (SmolLM, Qwen2, Llama 3)",
                          hint="export --format merged and use llama.cpp's convert_hf_to_gguf.py for this tokenizer")
    by_id = {i: t for t, i in model["vocab"].items()}
    kinds = {}
    for added in tokenizer_json.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    tokens, types = [], []
    for i in range(vocab_size):  # embedding rows past the tokenizer (padding) get placeholder names, as llama.cpp does
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(kinds.get(i, gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED))
    return tokens, types


def write_gguf(model, tokenizer, path: str, quant: str = "q8_0", name: str = "model",
               source_gguf: str | None = None) -> dict:
    """Write ``model`` (a plain float32 transformers model) and ``tokenizer`` to ``path``: the architecture's
    hyper-parameters, the tokenizer, then every tensor under llama.cpp's name, in ``quant``."""
    import gguf

    if quant not in QUANTS:
        raise ConfigError(f"unknown GGUF quantization '{quant}'", hint=f"choose one of: {', '.join(QUANTS)}")
    config = model.config
    arch = check_architecture(config)
    vocab = model.get_input_embeddings().weight.shape[0]
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    _add_hyperparameters(w, config, vocab, quant)
    _add_tokenizer(w, tokenizer, config, vocab, source_gguf)
    counts = _add_tensors(w, model, arch, quant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": arch, "quantization": quant, "tensor_types": counts, "vocab_size": vocab}


def _add_hyperparameters(w, config, vocab: int, quant: str) -> None:
    import gguf

    heads = config.num_attention_heads
    layers, kv_heads, head_dim = kv_layout(config)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    if rope.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"rope scaling '{rope['rope_type']}' is not written to GGUF by ownllm",
                          hint="export --format merged and use llama.cpp's convert_hf_to_gguf.py")
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(vocab)
    if head_dim != config.hidden_size // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(w, tokenizer, config, vocab: int, source_gguf: str | None) -> None:
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            tokens, types = _tokens(json.load(f), vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_pre_tokenizer(config, tokenizer, source_gguf))
        w.add_token_list(tokens)
        w.add_token_types(types)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab)
        if tokenizer.chat_template is None:
            from ownllm.models.templates import chat_template_for

            special.chat_template = chat_template_for(tokenizer)
        special.add_to_gguf(w, quiet=True)


def _add_tensors(w, model, arch: str, quant: str) -> dict:
    """Every tensor under its llama.cpp name, in ``quant`` where it fills 32-value blocks; returns the
    count of tensors per stored type."""
    import gguf
    import numpy as np

    config = model.config
    layers, kv_heads, _ = kv_layout(config)
    heads = config.num_attention_heads
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2 if arch == "qwen2" else gguf.MODEL_ARCH.LLAMA, layers)
    counts = {}
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(f"no GGUF name for the tensor '{hf_name}'", hint=f"architectures ownllm maps: {supported()}")
        data = tensor.float().numpy()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        t = qtype
        if data.ndim != 2 or data.shape[-1] % 32:
            t = gguf.GGMLQuantizationType.F32  # norms, biases, rows that do not fill a 32-value block
        elif quant == "q4_0" and target in ("token_embd.weight", "output.weight"):
            t = gguf.GGMLQuantizationType.Q8_0  # as llama-quantize does: the vocabulary matrix keeps more bits
        counts[t.name] = counts.get(t.name, 0) + 1
        if t == gguf.GGMLQuantizationType.F32:
            w.add_tensor(target, data.astype(np.float32))
        elif t == gguf.GGMLQuantizationType.F16:
            w.add_tensor(target, data.astype(np.float16))
        else:
            w.add_tensor(target, gguf.quants.quantize(data, t), raw_dtype=t)
    return counts


# -- Ollama --------------------------------------------------------------------------------------
# Chat templates in Ollama's Go syntax, as (before the messages, one message, after them, stop tokens).
# Only .Messages is used, never .System: Ollama puts the Modelfile's SYSTEM (or the request's system
# message) into .Messages, so a template that also printed .System would show a system message twice.
_OLLAMA_TEMPLATES = {
    "<|im_start|>": ("", "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n", "<|im_start|>assistant\n",
                     ["<|im_end|>"]),
    "<|start_header_id|>": ("<|begin_of_text|>", "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
                            "{{ .Content }}<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                            ["<|eot_id|>"]),
}


def _ollama_form(chat_template: str | None):
    return next((form for marker, form in _OLLAMA_TEMPLATES.items() if chat_template and marker in chat_template),
                None)


def _render(form, messages: list[dict]) -> str:
    """What the Go template of ``form`` renders for ``messages`` (it has no other logic)."""
    before, one, after, _ = form
    return before + "".join(one.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
                            for m in messages) + after


def default_system(tokenizer) -> str | None:
    """The system prompt the chat template adds when a conversation brings none (SmolLM2's "You are a
    helpful AI assistant named SmolLM…"), found by rendering a conversation without one."""
    import re

    from ownllm.models.templates import chat_template_for

    template = chat_template_for(tokenizer)  # None: the tokenizer's own
    form = _ollama_form(template or tokenizer.chat_template)
    if form is None:
        return None
    question = [{"role": "user", "content": "Q"}]
    hf = tokenizer.apply_chat_template(question, chat_template=template, tokenize=False, add_generation_prompt=True)
    if hf == _render(form, question):
        return None
    head, _, tail = form[1].replace("{{ .Role }}", "system").partition("{{ .Content }}")
    found = re.match(re.escape(form[0] + head) + "(.*?)" + re.escape(tail), hf, re.S)
    if found and hf == _render(form, [{"role": "system", "content": found.group(1)}] + question):
        return found.group(1)
    return None


def modelfile(gguf_name: str, tokenizer, system: str | None) -> str:
    """An Ollama Modelfile: the chat template in Ollama's Go syntax (ChatML and Llama 3 are translated;
    for others Ollama reads the template stored in the GGUF), stop tokens, and the system prompt — the
    run's, else the one the chat template adds by itself, so Ollama builds the prompt transformers builds."""
    from ownllm.models.templates import chat_template_for

    lines = [f"FROM ./{gguf_name}", ""]
    form = _ollama_form(chat_template_for(tokenizer) or tokenizer.chat_template)
    if form is not None:
        before, one, after, stops = form
        lines += [f'TEMPLATE """{before}{{{{- range .Messages }}}}{one}{{{{ end }}}}{after}"""']
        lines += [f'PARAMETER stop "{s}"' for s in stops]
        system = system or default_system(tokenizer)
    else:
        lines.append("# no TEMPLATE line: Ollama uses the chat template stored in the GGUF file")
        if tokenizer.eos_token:
            lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    lines += ["PARAMETER temperature 0.7", "PARAMETER top_p 0.9", "PARAMETER repeat_penalty 1.1"]
    if system:
        lines.append('SYSTEM """' + system.replace('"""', '\\"\\"\\"') + '"""')
    return "\n".join(lines) + "\n"


def usage_readme(gguf_name: str, model_name: str) -> str:
    return f"""# {model_name} as GGUF

Written by ownllm; `manifest.json` lists the files, their SHA-256 and the checks they passed.

## Ollama

```bash
ollama create {model_name} -f Modelfile
ollama run {model_name} "你好"
```

## llama.cpp

```bash
llama-cli -m {gguf_name} -cnv            # chat in the terminal, with the chat template inside the file
llama-server -m {gguf_name} --port 8080  # OpenAI-compatible server
```
"""
