"""GGUF for llama.cpp and Ollama, written with the ``gguf`` package (llama.cpp's own Python library).

The ``gguf`` package carries llama.cpp's architecture names and tensor-name tables; what differs per family
(Q/K row order, Gemma's norm offset, Phi-3's partial rotary, Llama 3's rope frequencies) is written once, in
:data:`FAMILIES`. Tokenizers: byte-level BPE (SmolLM, Qwen, Llama 3, Phi-4) from ``tokenizer.json``; any
tokenizer when the base model was itself read from a GGUF file (its tokenizer is copied, as Gemma's is).
Weights are stored as f16, q8_0 or q4_0; norms stay f32. The file is checked by loading it back with
transformers' GGUF reader.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from ownllm.errors import ConfigError
from ownllm.models.architecture import kv_layout

QUANTS = ("f16", "q8_0", "q4_0")


@dataclass(frozen=True)
class Family:
    """How one transformers ``model_type`` is written: llama.cpp's architecture (a ``gguf.MODEL_ARCH`` name)
    and the family's quirks."""
    arch: str
    permute_qk: bool = False     # llama.cpp's llama graph wants Meta's interleaved rotary rows
    norm_offset: float = 0.0     # Gemma stores norm weights as w - 1; llama.cpp wants w
    sliding_window: bool = False  # Gemma 3: local attention on most layers


FAMILIES = {
    "llama": Family("LLAMA", permute_qk=True),
    "mistral": Family("LLAMA", permute_qk=True),
    "qwen2": Family("QWEN2"),
    "qwen3": Family("QWEN3"),
    "gemma3_text": Family("GEMMA3", norm_offset=1.0, sliding_window=True),
    "phi3": Family("PHI3"),
}
# Families transformers trains but ownllm does not write to GGUF, with the reason.
NOT_WRITTEN = {
    "smollm3": "transformers cannot read a SmolLM3 GGUF back, so ownllm could not check the file it wrote",
}


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


INSTEAD = "export --format merged (or onnx) and use llama.cpp's convert_hf_to_gguf.py"


def _refusal(model_type: str) -> str:
    return (f"ownllm cannot write a '{model_type}' model to GGUF: "
            f"{NOT_WRITTEN.get(model_type, 'ownllm has no mapping for it')}")


def cannot_write(model_type: str | None) -> str | None:
    """Why a model of ``model_type`` cannot go to GGUF, with what to do instead; None when it can (or when
    the type is not known, e.g. a .gguf base: its config is read when the model loads)."""
    if not model_type or model_type in FAMILIES:
        return None
    return f"{_refusal(model_type)}; {INSTEAD}"


def check_architecture(config) -> Family:
    """The family of ``config``, or a ConfigError naming the family, the format and what works instead."""
    kind = getattr(config, "model_type", None)
    family = FAMILIES.get(kind)
    if family is None:
        raise ConfigError(_refusal(kind or "?"), hint=f"families it writes: {supported()}; for this one, {INSTEAD}")
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", "llama3", None):
        raise ConfigError(f"rope scaling '{rope['rope_type']}' of this '{kind}' model is not written to GGUF by ownllm",
                          hint=INSTEAD)
    return family


def rope_read_back(config) -> dict:
    """What reading the file back with transformers needs beside it: its reader drops Llama 3's rope
    scaling (llama.cpp reads it from the ``rope_freqs`` tensor, whose values are tested against
    transformers' own), so the check compares weights and tokenizer under the trained model's config."""
    return {"config": config} if _rope(config).get("rope_type") == "llama3" else {}


def _rope(config) -> dict:
    """The rope parameters of the global-attention layers (Gemma 3 keeps one set per layer kind)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if "full_attention" in rope:
        rope = rope["full_attention"]
    return dict(rope, rope_theta=rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _pre_tokenizer(config, tokenizer, source_gguf: str | None) -> str:
    """llama.cpp's name for the pre-tokenizer: the source GGUF's own, else the known family's."""
    if source_gguf:
        from gguf import GGUFReader

        field = GGUFReader(source_gguf).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return field.contents()
    if config.model_type in ("qwen2", "qwen3"):
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
    family = check_architecture(config)
    arch = gguf.MODEL_ARCH[family.arch]
    vocab = model.get_input_embeddings().weight.shape[0]
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    # transformers' reader takes a llama file named exactly "mistral" for its Mistral class, then fails
    w.add_name(name if name != "mistral" else "mistral-model")
    _add_hyperparameters(w, config, family, vocab, quant)
    _add_tokenizer(w, tokenizer, config, vocab, source_gguf)
    counts = _add_tensors(w, model, family, quant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": gguf.MODEL_ARCH_NAMES[arch], "quantization": quant, "tensor_types": counts,
            "vocab_size": vocab}


def _add_hyperparameters(w, config, family: Family, vocab: int, quant: str) -> None:
    import gguf

    heads = config.num_attention_heads
    layers, kv_heads, head_dim = kv_layout(config)
    rope = _rope(config)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(int(head_dim * (getattr(config, "partial_rotary_factor", None) or 1.0)))
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(vocab)
    w.add_key_length(head_dim)  # always: readers that miss it assume their family's default, not width / heads
    w.add_value_length(head_dim)
    if family.sliding_window and getattr(config, "sliding_window", None):
        w.add_sliding_window(config.sliding_window)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(w, tokenizer, config, vocab: int, source_gguf: str | None) -> None:
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            tokenizer_json = json.load(f)
        if _byte_level(tokenizer_json):
            tokens, types = _tokens(tokenizer_json, vocab)
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(_pre_tokenizer(config, tokenizer, source_gguf))
            w.add_token_list(tokens)
            w.add_token_types(types)
            merges = True
        else:
            _copy_tokenizer(w, source_gguf, vocab)
            merges = False
        special = gguf.SpecialVocab(tmp, load_merges=merges, n_vocab=vocab)
        if tokenizer.chat_template is None:
            from ownllm.models.templates import chat_template_for

            special.chat_template = chat_template_for(tokenizer)
        special.add_to_gguf(w, quiet=True)


def _byte_level(tokenizer_json: dict) -> bool:
    return tokenizer_json["model"].get("type") == "BPE" and \
        (tokenizer_json.get("decoder") or {}).get("type") == "ByteLevel"


def _copy_tokenizer(w, source_gguf: str | None, vocab: int) -> None:
    """A SentencePiece-style vocabulary (Gemma's) taken from the GGUF file the base model was read from:
    its pieces, scores and types are exactly what llama.cpp tokenizes with (tokenizer.json holds no scores)."""
    if not source_gguf:
        raise ConfigError("GGUF export writes byte-level BPE tokenizers (SmolLM, Qwen, Llama 3), or copies the "
                          "tokenizer of a base model that was itself a GGUF file; this model is neither",
                          hint=INSTEAD)
    from gguf import GGUFReader

    fields = GGUFReader(source_gguf).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    if len(tokens) != vocab:
        raise ConfigError(f"the model has {vocab} vocabulary rows but its source GGUF {source_gguf} has {len(tokens)} "
                          "tokens (terms added in training?)",
                          hint=INSTEAD)
    w.add_tokenizer_model(fields["tokenizer.ggml.model"].contents())
    w.add_tokenizer_pre(fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else "default")
    w.add_token_list(tokens)
    w.add_token_scores(fields["tokenizer.ggml.scores"].contents())
    w.add_token_types(fields["tokenizer.ggml.token_type"].contents())
    if "tokenizer.ggml.add_space_prefix" in fields:
        w.add_add_space_prefix(bool(fields["tokenizer.ggml.add_space_prefix"].contents()))


def _llama3_rope_factors(config, head_dim: int):
    """The per-frequency divisors of Llama 3's rope scaling, which llama.cpp reads from a ``rope_freqs``
    tensor (transformers computes them on the fly from ``rope_parameters``)."""
    import numpy as np

    rope = _rope(config)
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (float(rope["rope_theta"]) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    wavelen = 2 * np.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def _float_tensors(model, tied: bool, head_dim: int):
    """(name, float32 array) for every tensor to write, converted as it is reached; then Llama 3's rope_freqs."""
    for hf_name, t in model.state_dict().items():
        if not (tied and hf_name == "lm_head.weight"):
            yield hf_name, t.float().numpy()
    if _rope(model.config).get("rope_type") == "llama3":
        yield "rope_freqs.weight", _llama3_rope_factors(model.config, head_dim)


def _add_tensors(w, model, family: Family, quant: str) -> dict:
    """Every tensor under its llama.cpp name, in ``quant`` where it fills 32-value blocks; returns the
    count of tensors per stored type."""
    import gguf
    import numpy as np

    config = model.config
    layers, kv_heads, head_dim = kv_layout(config)
    heads = config.num_attention_heads
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.arch], layers)
    counts = {}
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, data in _float_tensors(model, tied, head_dim):  # one at a time: a 7B model has no room for two
        target = "rope_freqs.weight" if hf_name == "rope_freqs.weight" else \
            names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(f"no GGUF name for the tensor '{hf_name}'", hint=f"families ownllm writes: {supported()}")
        if family.permute_qk and hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif family.permute_qk and hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        if family.norm_offset and hf_name.endswith("norm.weight"):
            data = data + family.norm_offset
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

    from ownllm.models.templates import chat_template_for, render_chat

    template = chat_template_for(tokenizer)  # None: the tokenizer's own
    form = _ollama_form(template or tokenizer.chat_template)
    if form is None:
        return None
    question = [{"role": "user", "content": "Q"}]
    hf = render_chat(tokenizer, question, template, add_generation_prompt=True)
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
    from ownllm.models.templates import chat_template_for, turn_end_ids

    lines = [f"FROM ./{gguf_name}", ""]
    form = _ollama_form(chat_template_for(tokenizer) or tokenizer.chat_template)
    if form is not None:
        before, one, after, stops = form
        lines += [f'TEMPLATE """{before}{{{{- range .Messages }}}}{one}{{{{ end }}}}{after}"""']
        lines += [f'PARAMETER stop "{s}"' for s in stops]
        system = system or default_system(tokenizer)
    else:
        lines.append("# no TEMPLATE line: Ollama uses the chat template stored in the GGUF file")
        # stop where the template ends an answer (Gemma's <end_of_turn>), and at the end of sequence
        lines += [f'PARAMETER stop "{tokenizer.convert_ids_to_tokens(t)}"' for t in turn_end_ids(tokenizer)]
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
