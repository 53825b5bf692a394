"""`ownllm export SOURCE --format merged|adapter|onnx|gguf`: write the export into a temporary folder,
prove it (reload it with a plain reader and compare it with the trained model), write
``manifest.json``, and only then rename the folder into place."""
from __future__ import annotations

import os
import re

from dataclasses import dataclass

from ownllm.config import setting
from ownllm.errors import ConfigError, OwnLLMError
from ownllm.export.common import (CONFIDENT_MARGIN, agreement, choices_kept, float_export_checks, for_other_servers,
                                  probe_prompts, share, confident_check, confident_share)
from ownllm.export.manifest import check, raise_if_failed, write_manifest
from ownllm.rundir import RunDir, adapter_in, base_of_adapter, run_dir_of
from ownllm.export.gguf import QUANTS
from ownllm.utils import atomic_dir

FORMATS = ("merged", "adapter", "onnx", "gguf")


@dataclass
class ExportConfig:
    """The export stage's settings: ``ownllm export``'s flags and the studio's export request."""
    format: str = setting("merged", "merged: adapter folded into the base weights; adapter: the adapter alone; "
                                    "onnx: model.onnx with past key/values for onnxruntime; gguf: llama.cpp/Ollama "
                                    "file with a Modelfile", choices=FORMATS)
    quant: str = setting("q8_0", "GGUF weight format (default q8_0)", choices=QUANTS)
    out: str | None = setting(None, "output folder (default RUN_DIR/export/FORMAT, gguf-QUANT for gguf)")
    overwrite: bool = setting(False, "replace an existing export folder")
# What a GGUF export must show against the trained model, per weight format: the largest relative
# perplexity rise, and the least share of next-token choices kept (all positions; positions where the
# trained model leads by a logit or more). Measured on the embedded 135M model (general text, probe
# prompts; benchmarks/RESULTS.md): perplexity f16 +0.03%, q8_0 -0.4%, q4_0 +39% (+2.8% on the demo run's
# answers: small models lose the most to 4-bit rounding); the thresholds leave room for that and fail
# a wrong weight layout, a dropped adapter or a wrong tokenizer (tests/test_export.py).
GGUF_THRESHOLDS = {
    "f16": {"perplexity_change": 0.005, "top1_agreement": 0.95, "confident_top1": 0.99},
    "q8_0": {"perplexity_change": 0.02, "top1_agreement": 0.90, "confident_top1": 0.97},
    "q4_0": {"perplexity_change": 0.50, "top1_agreement": 0.45, "confident_top1": 0.55},
}
GGUF_PERPLEXITY_TOLERANCE = {q: t["perplexity_change"] for q, t in GGUF_THRESHOLDS.items()}


def default_out(source: str, fmt: str, quant: str = "q8_0") -> str:
    leaf = f"gguf-{quant}" if fmt == "gguf" else fmt
    if run_dir_of(source) or os.path.isdir(RunDir(source).adapter_dir):
        return RunDir(source).export(leaf)
    stem = os.path.basename(os.fspath(source).rstrip("/")).replace("/", "--")
    return RunDir.under_runs(f"{os.path.splitext(stem)[0]}-{leaf}").path


def export(source: str, fmt: str = "merged", out: str | None = None, overwrite: bool = False,
           quant: str = "q8_0") -> dict:
    """Export ``source`` (a run directory, or any model name ``load_model`` accepts); returns the manifest."""
    from ownllm.models.load import load_model

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'", hint=", ".join(FORMATS))
    if fmt in ("merged", "adapter") and not os.path.isdir(source):
        raise OwnLLMError(f"run directory not found: {source}")
    if fmt == "gguf":
        if quant not in QUANTS:
            raise ConfigError(f"unknown GGUF quantization '{quant}'", hint=f"choose one of: {', '.join(QUANTS)}")
    out = out or default_out(source, fmt, quant)
    if os.path.exists(out) and not overwrite:
        raise ConfigError(f"{out} already exists", hint="pass --overwrite, or --out another folder")
    trained = load_model(source, device="cpu", merge=False)
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


def export_notes(model: str) -> list[str]:
    """What the exports cannot do for ``model`` (a registry alias or a model folder), said before any
    training time is spent: `ownllm plan` and the studio's plan step print these."""
    from ownllm.export.gguf import cannot_write
    from ownllm.planning.plan import spec_for

    try:
        spec = spec_for(model)
    except OwnLLMError:
        return []
    note = cannot_write(spec.architecture)
    return [note] if note else []


def _hf(trained, run_dir: str, tmp: str, fmt: str) -> dict:
    """merged: adapter folded into the base; adapter: the adapter alone. Both reloaded with plain
    transformers/peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ownllm.models.load import load_model, merge_adapter

    is_adapter = isinstance(trained.model, PeftModel)
    if fmt == "adapter" and not is_adapter:
        raise ConfigError(f"{run_dir} is a full fine-tune: there is no adapter to export", hint="use --format merged")
    prompts = probe_prompts(run_dir, trained.tokenizer)
    if fmt == "merged":
        # merge_and_unload changes the model in place, so the reference logits come from a fresh load
        reference = load_model(run_dir, device="cpu", merge=False).model
        merged = merge_adapter(trained.model, strict=True)[0]
        for_other_servers(merged, trained.tokenizer, run_dir)  # `vllm serve` / TGI read this folder as it is
        merged.save_pretrained(tmp)
        trained.tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp)
    else:
        reference = trained.model
        for_other_servers(None, trained.tokenizer, run_dir)
        trained.model.save_pretrained(tmp)
        trained.tokenizer.save_pretrained(tmp)
        base = load_model(run_dir, device="cpu", merge=False).model.get_base_model()
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

    run = run_dir_of(source)
    run_dir = run.path if run else None
    base = os.path.basename(os.path.abspath(source)) if os.path.exists(source) else source
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"
    fname = f"{name}-{quant}.gguf"
    plain = plain_copy(trained)
    info = write_gguf(plain, trained.tokenizer, os.path.join(tmp, fname), quant, name, _source_gguf(source))
    # checked against the trained model as it was loaded (adapter unmerged), so that what went wrong on
    # the way — the merge, the copy, the layout — shows; the plain copy stands in for a 16-bit or 4-bit one
    reference = trained.model if next(trained.model.parameters()).dtype == plain.dtype else plain
    checks, measured = _verify_gguf(reference, trained.tokenizer, tmp, fname, quant, run_dir,
                                   probe_prompts(run_dir, trained.tokenizer))
    tok = trained.tokenizer
    atomic_write(os.path.join(tmp, "Modelfile"), modelfile(fname, tok, run.system_prompt() if run else None))
    atomic_write(os.path.join(tmp, "README.md"), usage_readme(fname, name))
    return write_manifest(tmp, "gguf", run_dir or source, checks, {**info, **measured})


def _verify_gguf(reference, tokenizer, folder: str, fname: str, quant: str, run_dir: str | None,
                 prompts: list[str]):
    """Load the file back with transformers' GGUF reader; compare its tokenizer, perplexity (the
    run's validation rows, else general text), next-token choices and greedy text with the float model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.evaluation.measure import perplexity_on_rows, sample_rows
    from ownllm.export.gguf import rope_read_back
    from ownllm.models.load import clear_gguf_marks

    tok2 = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model2 = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32,
                                                  **rope_read_back(reference.config)).eval()
    clear_gguf_marks(model2)
    rows = sample_rows(run_dir or "")
    ppl_before, ppl_after = perplexity_on_rows(reference, tokenizer, rows), perplexity_on_rows(model2, tokenizer, rows)
    a = agreement(reference, model2, tokenizer, prompts, candidate_tokenizer=tok2)
    change = ppl_after / ppl_before - 1
    t = GGUF_THRESHOLDS[quant]
    checks = [check("tokenizer read back from the GGUF gives the same token ids", float(a.same_tokens), at_least=1.0),
              check(f"perplexity change vs the trained model on {len(rows)} rows", round(change, 4),
                    at_most=t["perplexity_change"]),
              check("next-token choices agreeing", a.top1_agreement, at_least=t["top1_agreement"]),
              confident_check(f"next-token choices agreeing where the trained model leads by {CONFIDENT_MARGIN:g} "
                              "logit or more", a.confident_top1, a.confident_positions, t["confident_top1"])]
    measured = {"perplexity_float": round(ppl_before, 4), "perplexity_gguf": round(ppl_after, 4),
                "top1_agreement": a.top1_agreement, "confident_top1": a.confident_top1,
                "confident_positions": a.confident_positions,
                "max_logit_diff": a.max_logit_diff, "greedy_matching_fraction": a.greedy_matching_fraction,
                "probe_prompts": len(prompts), "checked_by": ["transformers"]}
    by_llama = _verify_with_llamacpp(reference, tokenizer, os.path.join(folder, fname), quant, prompts)
    if by_llama:
        checks += by_llama[0]
        measured.update(by_llama[1])
        measured["checked_by"].append(by_llama[1]["llamacpp_version"])
    return checks, measured


def _verify_with_llamacpp(reference, tokenizer, path: str, quant: str, prompts: list[str]):
    """When llama-cpp-python is installed (``pip install 'ownllm[llamacpp]'``), read the file with
    llama.cpp itself, the program people run it with: its tokenization of the probe prompts, and its
    next-token choices against the trained model's. None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    import numpy as np
    import torch

    llm = llama_cpp.Llama(path, n_ctx=max(512, *(len(tokenizer(p)["input_ids"]) + 8 for p in prompts)),
                          logits_all=True, verbose=False, n_threads=max(1, torch.get_num_threads()))
    same, worst, agree, total, sure, sure_total = True, 0.0, 0, 0, 0, 0
    try:
        for text in prompts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            same &= llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids
            llm.reset()
            llm.eval(ids)
            got = torch.from_numpy(np.asarray(llm.scores[: len(ids)], dtype=np.float32))
            with torch.inference_mode():
                ref = reference(input_ids=torch.tensor([ids])).logits[0].float().cpu()
            worst = max(worst, float((got - ref).abs().max()))
            counts = choices_kept(ref, got)
            agree, total, sure, sure_total = agree + counts[0], total + counts[1], sure + counts[2], sure_total + counts[3]
    finally:
        llm.close()
    t = GGUF_THRESHOLDS[quant]
    top1, confident_top1 = share(agree, total), confident_share(sure, sure_total)
    checks = [check("llama.cpp tokenizes the probe prompts as the trained model's tokenizer does", float(same),
                    at_least=1.0),
              check("llama.cpp: next-token choices agreeing", top1, at_least=t["top1_agreement"]),
              confident_check(f"llama.cpp: next-token choices agreeing where the trained model leads by "
                              f"{CONFIDENT_MARGIN:g} logit or more", confident_top1, sure_total, t["confident_top1"])]
    return checks, {"llamacpp_max_logit_diff": round(worst, 6), "llamacpp_top1_agreement": top1,
                    "llamacpp_version": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"}
