"""`ownllm export SOURCE --format merged|adapter|onnx|gguf`: write the export into a temporary folder,
prove it (reload it with a plain reader and compare it with the trained model), write
``manifest.json``, and only then rename the folder into place."""
from __future__ import annotations

import os
import re

from ownllm.errors import ConfigError, OwnLLMError
from ownllm.export.common import agreement, float_export_checks, probe_prompts
from ownllm.export.manifest import check, raise_if_failed, write_manifest
from ownllm.rundir import adapter_in, base_of_adapter, run_dir_of, system_prompt
from ownllm.utils import atomic_dir

FORMATS = ("merged", "adapter", "onnx", "gguf")
# Largest relative perplexity rise a GGUF export may show, per weight format. Measured on the embedded
# 135M model's general text: f16 +0.03%, q8_0 -0.4%, q4_0 +39% (+2.8% on the demo run's answers);
# small models lose the most to 4-bit rounding.
GGUF_PERPLEXITY_TOLERANCE = {"f16": 0.005, "q8_0": 0.02, "q4_0": 0.50}


def default_out(source: str, fmt: str, quant: str = "q8_0") -> str:
    leaf = f"gguf-{quant}" if fmt == "gguf" else fmt
    if run_dir_of(source) or os.path.isdir(os.path.join(source, "adapter")):
        return os.path.join(source, "export", leaf)
    stem = os.path.basename(os.fspath(source).rstrip("/")).replace("/", "--")
    return os.path.join("runs", f"{os.path.splitext(stem)[0]}-{leaf}")


def export(source: str, fmt: str = "merged", out: str | None = None, overwrite: bool = False,
           quant: str = "q8_0") -> dict:
    """Export ``source`` (a run directory, or any model name ``load_model`` accepts); returns the manifest."""
    from ownllm.models.load import load_model

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'", hint=", ".join(FORMATS))
    if fmt in ("merged", "adapter") and not os.path.isdir(source):
        raise OwnLLMError(f"run directory not found: {source}")
    if fmt == "gguf":
        from ownllm.export.gguf import QUANTS

        if quant not in QUANTS:
            raise ConfigError(f"unknown GGUF quantization '{quant}'", hint=f"choose one of: {', '.join(QUANTS)}")
    out = out or default_out(source, fmt, quant)
    if os.path.exists(out) and not overwrite:
        raise ConfigError(f"{out} already exists", hint="pass --overwrite, or --out another folder")
    trained = load_model(source, device="cpu")
    if fmt == "gguf":
        from ownllm.export.gguf import check_architecture

        check_architecture(trained.model.config)  # before any work: the message lists what can be written
    with atomic_dir(out) as tmp:
        if fmt == "onnx":
            from ownllm.export.onnx import ONNXExporter

            manifest = ONNXExporter(trained, source=source).export(os.path.join(tmp, "model.onnx"),
                                                                   manifest_name="manifest.json")
        elif fmt == "gguf":
            manifest = _gguf(trained, source, tmp, quant)
        else:
            manifest = _hf(trained, source, tmp, fmt)
        raise_if_failed(manifest, fmt, out)
    manifest["path"] = out
    return manifest


def _hf(trained, run_dir: str, tmp: str, fmt: str) -> dict:
    """merged: adapter folded into the base; adapter: the adapter alone. Both reloaded with plain
    transformers/peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ownllm.models.load import load_model
    from ownllm.training.methods import merge

    is_adapter = isinstance(trained.model, PeftModel)
    if fmt == "adapter" and not is_adapter:
        raise ConfigError(f"{run_dir} is a full fine-tune: there is no adapter to export", hint="use --format merged")
    prompts = probe_prompts(run_dir, trained.tokenizer)
    if fmt == "merged":
        # merge_and_unload changes the model in place, so the reference logits come from a fresh load
        reference = load_model(run_dir, device="cpu").model
        merge(trained.model).save_pretrained(tmp)
        trained.tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp)
    else:
        reference = trained.model
        trained.model.save_pretrained(tmp)
        trained.tokenizer.save_pretrained(tmp)
        base = load_model(run_dir, device="cpu").model.get_base_model()
        reloaded = PeftModel.from_pretrained(base, tmp)
    reloaded.eval()
    checks = float_export_checks(agreement(reference, reloaded, trained.tokenizer, prompts), "vs the trained model")
    return write_manifest(tmp, fmt, run_dir, checks, {"probe_prompts": len(prompts)})


def _source_gguf(name: str) -> str | None:
    """The GGUF file the base model was read from, if it was one (its tokenizer metadata is reused)."""
    from ownllm.models.load import resolve

    try:
        adapter = adapter_in(name)
        src = resolve(base_of_adapter(adapter) if adapter else name)
    except OwnLLMError:
        return None
    return src.location if src.kind == "gguf" else None


def _gguf(trained, source: str, tmp: str, quant: str) -> dict:
    from ownllm.export.common import plain_copy
    from ownllm.export.gguf import modelfile, usage_readme, write_gguf
    from ownllm.utils import atomic_write

    run_dir = run_dir_of(source)
    base = os.path.basename(os.path.abspath(source)) if os.path.exists(source) else source
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"
    fname = f"{name}-{quant}.gguf"
    plain = plain_copy(trained)
    info = write_gguf(plain, trained.tokenizer, os.path.join(tmp, fname), quant, name, _source_gguf(source))
    checks, measured = _verify_gguf(plain, trained.tokenizer, tmp, fname, quant, run_dir,
                                   probe_prompts(run_dir, trained.tokenizer))
    tok = trained.tokenizer
    atomic_write(os.path.join(tmp, "Modelfile"), modelfile(fname, tok.chat_template, system_prompt(run_dir),
                                                            tok.eos_token))
    atomic_write(os.path.join(tmp, "README.md"), usage_readme(fname, name))
    return write_manifest(tmp, "gguf", run_dir or source, checks, {**info, **measured})


def _verify_gguf(reference, tokenizer, folder: str, fname: str, quant: str, run_dir: str | None,
                 prompts: list[str]):
    """Load the file back with transformers' GGUF reader; compare its tokenizer, perplexity (the
    run's validation rows, else general text), next-token choices and greedy text with the float model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.evaluation.measure import perplexity_on_rows, sample_rows
    from ownllm.models.load import clear_gguf_marks

    tok2 = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model2 = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32).eval()
    clear_gguf_marks(model2)
    rows = sample_rows(run_dir or "")
    ppl_before, ppl_after = perplexity_on_rows(reference, tokenizer, rows), perplexity_on_rows(model2, tokenizer, rows)
    a = agreement(reference, model2, tokenizer, prompts, candidate_tokenizer=tok2)
    change = ppl_after / ppl_before - 1
    checks = [check("tokenizer read back from the GGUF gives the same token ids", float(a.same_tokens), 1.0,
                    passed=a.same_tokens),
              check(f"perplexity change vs the float model on {len(rows)} rows", round(change, 4),
                    GGUF_PERPLEXITY_TOLERANCE[quant])]
    measured = {"perplexity_float": round(ppl_before, 4), "perplexity_gguf": round(ppl_after, 4),
                "top1_agreement": a.top1_agreement, "greedy_matching_fraction": a.greedy_matching_fraction,
                "probe_prompts": len(prompts)}
    return checks, measured
