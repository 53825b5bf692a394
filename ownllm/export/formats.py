"""`ownllm export SOURCE --format merged|adapter|onnx|gguf`: write the export into a temporary folder,
prove it (reload it with a plain reader and compare it with the trained model), write
``manifest.json``, and only then rename the folder into place."""
from __future__ import annotations

import os
import re

from ownllm.errors import ConfigError, OwnLLMError
from ownllm.export.common import GREEDY, compare, probe_prompts, run_dir_of
from ownllm.export.manifest import check, write_manifest
from ownllm.utils import atomic_dir

FORMATS = ("merged", "adapter", "onnx", "gguf")
LOGIT_TOLERANCE = 1e-3
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
        if not manifest["all_checks_passed"]:
            raise OwnLLMError(f"the {fmt} export failed its checks: {manifest['checks']}",
                              hint="nothing was written at " + out)
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
    diff, same = compare(reference, reloaded, trained.tokenizer, prompts)
    checks = [check("max |logit difference| vs the trained model", round(diff, 6), LOGIT_TOLERANCE),
              check("greedy 16-token continuations identical", float(same), 1.0, passed=same)]
    return write_manifest(tmp, fmt, run_dir, checks, {"probe_prompts": len(prompts)})


def _source_gguf(name: str) -> str | None:
    """The GGUF file the base model was read from, if it was one (its tokenizer metadata is reused)."""
    from ownllm.models.load import _adapter_in, _base_of_adapter, resolve

    try:
        adapter = _adapter_in(name)
        src = resolve(_base_of_adapter(adapter) if adapter else name)
    except OwnLLMError:
        return None
    return src.location if src.kind == "gguf" else None


def _run_system_prompt(run_dir: str | None) -> str | None:
    import yaml

    path = os.path.join(run_dir or "", "config.yaml")
    if not run_dir or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return (yaml.safe_load(f) or {}).get("system")


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
    atomic_write(os.path.join(tmp, "Modelfile"), modelfile(fname, tok.chat_template, _run_system_prompt(run_dir),
                                                            tok.eos_token))
    atomic_write(os.path.join(tmp, "README.md"), usage_readme(fname, name))
    return write_manifest(tmp, "gguf", run_dir or source, checks, {**info, **measured})


def _verify_gguf(reference, tokenizer, folder: str, fname: str, quant: str, run_dir: str | None,
                 prompts: list[str]):
    """Load the file back with transformers' GGUF reader; compare its tokenizer, perplexity (the
    run's validation rows, else general text), next-token choices and greedy text with the float model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.models.load import clear_gguf_marks
    from ownllm.quantization.quantize import _perplexity, _sample_rows

    tok2 = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model2 = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32).eval()
    clear_gguf_marks(model2)
    rows = _sample_rows(run_dir or "")
    ppl_before, ppl_after = _perplexity(reference, tokenizer, rows), _perplexity(model2, tokenizer, rows)
    same_tokens, agree, total, greedy = True, 0, 0, []
    for text in prompts:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        same_tokens &= tok2(text, add_special_tokens=False)["input_ids"] == enc["input_ids"][0].tolist()
        with torch.inference_mode():
            a, b = reference(**enc).logits, model2(**enc).logits
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[1]
            kw = dict(max_new_tokens=16, pad_token_id=tokenizer.pad_token_id, **GREEDY)
            start = enc["input_ids"].shape[1]
            ga, gb = reference.generate(**enc, **kw)[0, start:], model2.generate(**enc, **kw)[0, start:]
        n = min(len(ga), len(gb))
        greedy.append(next((i for i in range(n) if ga[i] != gb[i]), n) / max(1, len(ga)))
    change = ppl_after / ppl_before - 1
    checks = [check("tokenizer read back from the GGUF gives the same token ids", float(same_tokens), 1.0,
                    passed=same_tokens),
              check(f"perplexity change vs the float model on {len(rows)} rows", round(change, 4),
                    GGUF_PERPLEXITY_TOLERANCE[quant])]
    measured = {"perplexity_float": round(ppl_before, 4), "perplexity_gguf": round(ppl_after, 4),
                "top1_agreement": round(agree / max(1, total), 4),
                "greedy_matching_fraction": round(sum(greedy) / len(greedy), 4), "probe_prompts": len(prompts)}
    return checks, measured
