"""Turn a name into a model and tokenizer: alias | local HF folder | .gguf file | hub id.

GGUF files (the embedded default included) are converted once into a plain safetensors folder
in ownllm's cache: transformers keeps a GGUF ``quantization_config`` on models loaded with
``gguf_file=`` and its Trainer then refuses to train them, although the weights are plain fp32.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from ownllm.errors import ModelNotFoundError
from ownllm.models import registry
from ownllm.rundir import RunDir, adapter_in, base_of_adapter

log = logging.getLogger("ownllm")


def cache_dir(*parts: str) -> str:
    """ownllm's cache folder ($OWNLLM_HOME, default ~/.cache/ownllm)."""
    root = os.environ.get("OWNLLM_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "ownllm")
    return os.path.join(root, *parts)


def fingerprint(name: str, *parts: str) -> str:
    """A short key for results computed from the model ``name`` (and ``parts``): its resolved location and
    the time its config was written, so that a retrained or replaced model gets a new key."""
    source = resolve(name)
    where = source.location if source.kind == "hub" else local_folder(source)
    config = os.path.join(where, "config.json")
    stamp = str(os.path.getmtime(config)) if os.path.exists(config) else ""
    return hashlib.sha256("|".join([where, stamp, *parts]).encode()).hexdigest()[:16]


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except ImportError:
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


@dataclass
class ModelSource:
    kind: str                 # "folder" | "gguf" | "hub"
    location: str             # folder path, .gguf path, or hub id
    spec: registry.ModelSpec | None = None

    @property
    def name(self) -> str:
        return self.spec.alias if self.spec else self.location


def resolve(name: str) -> ModelSource:
    """Decide what ``name`` is, without loading anything (an embedded model split over packages is assembled
    into the cache the first time)."""
    if not name or not str(name).strip():
        raise ModelNotFoundError("no model was named", hint=f"try '{registry.DEFAULT_MODEL}' (see `ownllm models`)")
    name = os.fspath(name)
    if os.path.isdir(name):
        return ModelSource("folder", os.path.abspath(name), registry.lookup(os.path.basename(name.rstrip("/"))))
    if name.lower().endswith(".gguf"):
        if not os.path.isfile(name):
            raise ModelNotFoundError(f"GGUF file not found: {name}", hint="check the path")
        return ModelSource("gguf", os.path.abspath(name))
    spec = registry.lookup(name)
    if spec is not None and spec.embedded:
        return ModelSource("gguf", embedded_gguf(spec.alias), spec)
    if spec is not None:
        return ModelSource("hub", spec.hub_id, spec)
    head = name.split("/", 1)[0]
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or ("/" in name and os.path.isdir(head)):
        raise ModelNotFoundError(f"model folder not found: {name}", hint="check the path, or see `ownllm models`")
    if name.count("/") == 1:
        return ModelSource("hub", name)
    close = registry.suggest(name)
    raise ModelNotFoundError(
        f"unknown model '{name}'",
        hint=(f"did you mean {', '.join(close)}? " if close else "") + "`ownllm models` lists the aliases; "
             "a local folder, a .gguf file or a hub id (org/name) also work")


def embedded_gguf(alias: str) -> str:
    """The GGUF file of an embedded model: inside its package, or assembled once from its chunk packages
    into ownllm's cache (the package's own ``assemble`` checks the SHA-256)."""
    import importlib

    entry = registry.EMBEDDED[alias]
    if registry.embedded_folder(alias) is None:
        raise ModelNotFoundError(f"the embedded model '{alias}' is not installed", hint=f"run: {entry.install}")
    if not entry.assembled:
        path = registry.embedded_gguf_path(alias)
        if path is None:
            raise ModelNotFoundError(f"the package of '{alias}' holds no {entry.gguf}", hint=f"reinstall: {entry.install}")
        return path
    target = cache_dir("models", entry.gguf)
    if os.path.exists(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + f".tmp-{os.getpid()}"
    try:
        importlib.import_module(entry.package).assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError, ImportError) as e:  # a chunk package missing, a wrong checksum, a full disk
        raise ModelNotFoundError(f"could not assemble the embedded model '{alias}' into {target}: {e}",
                                 hint=f"reinstall it: {entry.install}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _gguf_cache_folder(path: str, spec) -> str:
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    stem = spec.alias.replace("/", "--") if spec else os.path.splitext(os.path.basename(path))[0]
    return cache_dir("models", f"{stem}-{key}")


def convert_gguf(path: str, spec=None) -> str:
    """Dequantize a GGUF file once into a safetensors folder in the cache; return that folder."""
    target = _gguf_cache_folder(path, spec)
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = os.path.split(path)
    log.info("converting %s once into %s", path, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname)
    except Exception as e:  # transformers raises many kinds here; the person needs one message
        arch = gguf_architecture(path)
        raise ModelNotFoundError(f"could not read the GGUF file {path}"
                                 + (f" (architecture '{arch}')" if arch else "") + f": {str(e).splitlines()[0]}",
                                 hint="transformers reads GGUF files of llama, mistral, qwen2, qwen3, gemma2/3, phi3 "
                                      "and a few others; for this one, use the model's Hugging Face folder") from e
    clear_gguf_marks(model)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(target))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:  # another process converted it first (replacing a full folder fails): keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(target, "config.json")):
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def gguf_architecture(path: str) -> str | None:
    """The ``general.architecture`` a GGUF file declares (None when it cannot be read at all)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(path).fields.get("general.architecture")
        return field.contents() if field is not None else None
    except Exception:  # a truncated or foreign file: the caller's message says the file could not be read
        return None


def clear_gguf_marks(model) -> None:
    """The one place that removes the GGUF 'quantization' marks of a dequantized (plain) model."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def _check_folder(path: str, allow_pickle: bool) -> None:
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)",
                                 hint="point to the folder that holds config.json and the weights")
    files = os.listdir(path)
    has_st = any(f.endswith(".safetensors") for f in files)
    has_pickle = any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    if not has_st and has_pickle and not allow_pickle:
        raise ModelNotFoundError(
            f"{path} holds only pickle weights (.bin/.pt), which can run code when loaded",
            hint="convert them to safetensors, or pass --allow-pickle if you trust this folder")
    if not has_st and not has_pickle:
        raise ModelNotFoundError(f"{path} has a config.json but no weights (*.safetensors)")


def local_folder(source: ModelSource, allow_pickle: bool = False) -> str:
    """A local folder holding the model: converts GGUF, finds the hub cache, checks files."""
    if source.kind == "gguf":
        return convert_gguf(source.location, source.spec)
    if source.kind == "folder":
        _check_folder(source.location, allow_pickle)
        return source.location
    return source.location  # hub id: from_pretrained resolves it (cache first)


def load_pretrained(name: str, *, device: str = "auto", dtype: str = "auto", allow_pickle: bool = False,
                    trust_remote_code: bool = False, quantization_config=None):
    """Load ``(model, tokenizer, source)``: the raw transformers objects, on the chosen device."""
    from ownllm.device import resolve_device, resolve_precision, torch_dtype

    source = resolve(name)
    folder = local_folder(source, allow_pickle)
    device = resolve_device(device)
    precision = resolve_precision(dtype, device) if dtype in ("auto", "fp32", "fp16", "bf16") else dtype
    if device == "cpu" and dtype == "auto":
        precision = "fp32"  # inference on CPU: fp32 is the fast path on most CPUs
    kwargs = dict(dtype=torch_dtype(precision), trust_remote_code=trust_remote_code,
                  use_safetensors=None if allow_pickle else True)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model, tokenizer = _from_pretrained(source, folder, kwargs, trust_remote_code)
    if quantization_config is None and not getattr(model, "is_quantized", False):
        model.to(device)  # bitsandbytes models are placed when loaded and refuse .to()
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source


def _from_pretrained(source: ModelSource, folder: str, kwargs: dict, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.kind != "hub":
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs), tok
    try:  # the cache first: no network round-trip when the files are here
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
        return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs), tok
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        raise _offline_error(source, "HF_HUB_OFFLINE is set")
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs), tok
    except OSError as e:
        raise _offline_error(source, str(e).splitlines()[0]) from e


def _offline_error(source: ModelSource, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"cannot load '{source.location}': it is not in the Hugging Face cache ({hf_cache_dir()}) "
        f"and could not be downloaded ({why})",
        hint=f"connect to the internet once, copy the model folder here and pass its path, "
             f"or use the embedded default '{registry.DEFAULT_MODEL}'")


def load_model(name: str = registry.DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
               allow_pickle: bool = False, trust_remote_code: bool = False, adapter: str | None = None,
               merge: bool = True):
    """Load a model for generation: ``load_model("smollm2-135m").generate("...")``.

    ``name`` is a registry alias, a local Hugging Face folder, a ``.gguf`` file or a hub id;
    a run directory or an adapter folder loads its base model with the adapter on top; a
    ``.onnx`` export (or its folder) runs with onnxruntime. ``merge`` (default): fold a LoRA/DoRA
    adapter into the weights in memory (checked against the unmerged model; files are not touched), so
    generation costs what the base model's does (unmerged, a run decoded at 0.72x the base model's
    speed); ``OwnModel.merge_note`` says why when it could not be merged. ``merge=False`` keeps the
    adapter separate, as exporting it or switching it off (the base model's answers) needs.
    """
    from ownllm.models.generation import OwnModel

    if is_onnx(name):
        from ownllm.models.onnx_runtime import load_onnx

        return load_onnx(name)
    adapter = adapter or adapter_in(name)
    full = RunDir(name).model_dir if os.path.isdir(name) else ""
    if not adapter and os.path.exists(os.path.join(full, "config.json")):
        name = full  # a run directory of a full fine-tune holds its model in model/
    base_name = base_of_adapter(adapter) if adapter else name
    model, tokenizer, source = load_pretrained(base_name, device=device, dtype=dtype,
                                               allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if adapter:
        from peft import PeftModel
        from transformers import AutoTokenizer

        if os.path.exists(os.path.join(adapter, "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(adapter)
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # terms added in training
                model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = PeftModel.from_pretrained(model, adapter)
        model.eval()
    stop_at_turn_end(model, tokenizer)
    note = None
    if merge and adapter:
        model, note = merge_adapter(model, tokenizer)
        if note:
            log.warning("ownllm: generating with the adapter unmerged: %s", note)
    own = OwnModel(model, tokenizer, name=source.name if not adapter else name, spec=source.spec)
    own.merge_note = note
    return own


def stop_at_turn_end(model, tokenizer) -> None:
    """Generation stops where the chat template ends an answer (Gemma's <end_of_turn>, not only <eos>):
    every token that closes a turn goes into the generation config's ``eos_token_id``."""
    from ownllm.models.templates import turn_end_ids

    config = getattr(model, "generation_config", None)
    if config is None or not getattr(tokenizer, "chat_template", None):
        return
    ends = turn_end_ids(tokenizer)
    if ends:
        config.eos_token_id = ends if len(ends) > 1 else ends[0]


MERGE_PROBE = "The capital of France is Paris. 人工智能的未来是"


def merge_adapter(model, tokenizer=None, *, strict: bool = False):
    """Fold a LoRA/DoRA adapter into the weights, in place (give it a model loaded for this): the one merge
    that chat, serve, eval, export and the quantizer all use. Returns ``(model, None)``, or ``(model, why)``
    unchanged when the adapter cannot be folded (prefix tuning; a quantized base, whose 4/8-bit weights
    would round it). ``strict``: the caller needs plain weights (export, quantize): prefix tuning is an
    error, a quantized base is folded all the same. With ``tokenizer``, merged and unmerged logits must
    agree on a probe prompt."""
    import torch
    from peft import PeftModel

    from ownllm.errors import ConfigError, OwnLLMError

    if not isinstance(model, PeftModel):
        return model, None
    kind = model.peft_config[model.active_adapter].peft_type.value
    if kind != "LORA":  # DoRA is LoRA with use_dora
        why = f"{kind.lower().replace('_', ' ')} adapters cannot be folded into the weights"
        if strict:
            raise ConfigError(f"{why}; export the adapter instead")
        return model, why
    if not strict and getattr(model.get_base_model(), "is_quantized", False):
        return model, "the base model is quantized: merging would round the adapter into its 4/8-bit weights"
    if tokenizer is None:
        return model.merge_and_unload(), None
    enc = {k: v.to(model.device) for k, v in tokenizer(MERGE_PROBE, return_tensors="pt").items()}
    with torch.inference_mode():
        before = model(**enc).logits.float()
    merged = model.merge_and_unload().eval()
    with torch.inference_mode():
        after = merged(**enc).logits.float()
    diff = float((before - after).abs().max())
    # fp32 sums in another order: ~1e-5; bf16/fp16 weights round the merged sum: relative to the logits
    tolerance = 1e-3 if after.dtype == torch.float32 and next(merged.parameters()).dtype == torch.float32 \
        else 0.05 * float(before.abs().max())
    if diff > tolerance:
        raise OwnLLMError(f"merging the adapter changed the logits by {diff:.4g} (tolerance {tolerance:.4g})",
                          hint="run with --no-merge, and report this with the run's adapter_config.json")
    return merged, None


def base_of(tuned, base_name: str | None):
    """``(model, context)``: the base model of a tuned ``OwnModel``. For an adapter, the same network
    with the adapter switched off inside ``context`` (no second copy in memory); for a full
    fine-tune, a fresh load of ``base_name`` (the run's ``model``) and a context that does nothing."""
    from contextlib import nullcontext

    from peft import PeftModel

    if isinstance(tuned.model, PeftModel):
        return tuned.model, tuned.model.disable_adapter()
    return load_model(base_name or registry.DEFAULT_MODEL).model, nullcontext()


def is_onnx(name) -> bool:
    """A .onnx file, or a folder with model.onnx and no transformers config (an ONNX export)."""
    name = os.fspath(name)
    if name.endswith(".onnx"):
        return True
    return os.path.isdir(name) and os.path.exists(os.path.join(name, "model.onnx")) \
        and not os.path.exists(os.path.join(name, "config.json"))


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Only the tokenizer of a model (alias, folder, .gguf, hub id, run dir or adapter)."""
    from transformers import AutoTokenizer

    adapter = adapter_in(name)
    if adapter and os.path.exists(os.path.join(adapter, "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(adapter)
    source = resolve(base_of_adapter(adapter) if adapter else name)
    folder = source.location if source.kind == "folder" else local_folder(source)  # no weights needed
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                            local_files_only=source.kind != "hub" or None)
    except OSError as e:
        raise _offline_error(source, str(e).splitlines()[0]) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
