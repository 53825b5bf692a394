"""Which runtime generates for `serve` and `chat`: ``--engine auto|torch|onnx|llamacpp``.

- ``torch``: transformers (a run's adapter folded in). With ``--dtype auto`` on a CPU with native bf16
  it generates in bf16 when a bf16 copy passes the check below against fp32, else fp32.
- ``onnx``: onnxruntime on the run's ONNX export (``RUN/export/onnx``, built once with its manifest and
  reused while it is newer than the trained weights; for a model name, in ownllm's cache). The export's
  own checks (logits within 1e-3 of torch, greedy text identical) are its verification.
- ``llamacpp``: llama.cpp (``pip install llama-cpp-python``) on the run's f16 GGUF export, checked at
  start: its greedy answers to the probe prompts must be torch's, or it is refused. Its context holds
  at most ``llamacpp_runtime.LLAMACPP_CONTEXT`` tokens (it keeps every position's logits: context × vocabulary floats).
- ``auto``: on a CPU, every engine that is installed and passes its check is timed on this machine as it
  will serve (``concurrency`` requests at once: batched where the engine batches, one after another
  where it does not) and the fastest serves. The ONNX export is built automatically for models up to
  1.5B parameters (export time and disk); an existing export is always considered. On a GPU, ``auto``
  is torch on the GPU: the other engines here run on the CPU.
"""
from __future__ import annotations

import copy
import gc
import logging
import os
import time
from importlib.util import find_spec

from ownllm.errors import ConfigError, require

log = logging.getLogger("ownllm.engines")
ENGINES = ("auto", "torch", "onnx", "llamacpp")
AUTO_EXPORT_MAX_PARAMS = 1.5e9
TIMING_PROMPT = "Write a short story about a lighthouse keeper and a storm."
TIMING_TOKENS = 24
# a bf16 copy serves only if, on the probe prompts, its greedy text is fp32's and no confident choice flips
BF16_THRESHOLDS = {"greedy_matching_fraction": 1.0, "confident_top1": 1.0}
# llama.cpp on the f16 GGUF: its greedy text must be torch's (its logits differ by f16 rounding)
LLAMACPP_THRESHOLDS = {"greedy_matching_fraction": 1.0}


def load_engine(source: str, engine: str = "auto", device: str = "auto", dtype: str = "auto", merge: bool = True,
                concurrency: int = 1, **load_kwargs):
    """``(OwnModel, record)``: the model generating with the chosen engine, and a record of the choice
    (engine, dtype, why, checks and tokens/s measured) that ``serve`` logs and ``/health`` shows.
    ``concurrency``: how many requests ``auto`` times at once (serve's batch; 1 for chat)."""
    from ownllm.models.load import is_onnx, load_model
    from ownllm.device import resolve_device

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'", hint=f"choose one of: {', '.join(ENGINES)}")
    if is_onnx(source):
        if engine not in ("auto", "onnx"):
            raise ConfigError(f"{source} is an ONNX file: only --engine onnx (or auto) runs it")
        return load_model(source), {"engine": "onnx", "why": "an ONNX file was given"}
    on_cpu = resolve_device(device) == "cpu"
    if engine != "torch" and not on_cpu and device != "auto":
        raise ConfigError(f"--engine {engine} runs on the CPU; --device {device} needs --engine torch")
    if engine == "torch" or (engine == "auto" and not on_cpu):
        return _torch(source, device, dtype, merge, load_kwargs)
    if engine == "onnx":
        return _onnx(source, build=True), {"engine": "onnx", "why": "--engine onnx"}
    if engine == "llamacpp":
        require("llama_cpp", "--engine llamacpp", package="llama-cpp-python", extra="llamacpp")
        reference = load_model(source, device="cpu", dtype="fp32", merge=merge, **load_kwargs)
        model, checks = _llamacpp(source, reference)
        if not checks["passed"]:
            found = checks["vs_torch_fp32"]
            raise ConfigError(f"llama.cpp does not give torch's answers for {source}: greedy text matches on "
                              f"{found['greedy_matching_fraction']:.0%} of the probe prompts (needed: "
                              f"{LLAMACPP_THRESHOLDS['greedy_matching_fraction']:.0%}), largest logit difference "
                              f"{found['max_logit_diff']:.3g}", hint="serve with --engine torch (or auto, which leaves "
                              "an engine that fails its check out); a newer llama-cpp-python may read this model right")
        return model, {"engine": "llamacpp", "why": "--engine llamacpp, verified against torch", "checks": checks}
    return _auto(source, device, dtype, merge, load_kwargs, concurrency)


# -- torch -----------------------------------------------------------------------------------------
def _torch(source: str, device: str, dtype: str, merge: bool, load_kwargs: dict):
    from ownllm.models.load import load_model
    from ownllm.device import cpu_has_fast_bf16, resolve_device

    if not (dtype == "auto" and resolve_device(device) == "cpu" and cpu_has_fast_bf16()):
        own = load_model(source, device=device, dtype=dtype, merge=merge, **load_kwargs)
        return own, {"engine": "torch", "dtype": _dtype_name(own), "why": f"--dtype {dtype}"}
    own = load_model(source, device="cpu", dtype="fp32", merge=merge, **load_kwargs)
    if getattr(own.model, "is_quantized", False):
        return own, {"engine": "torch", "dtype": "quantized", "why": "quantized weights stay as they are"}
    return _bf16_if_verified(own, source)


def verify(reference, candidate, tokenizer, source: str, thresholds: dict) -> dict:
    """How ``candidate`` (a model) follows ``reference`` on the probe prompts (the export checks' ``agreement``:
    logits, next-token choices, 32-token greedy text), and whether every figure meets ``thresholds``
    (a figure with nothing to measure, None, does not)."""
    from dataclasses import asdict

    from ownllm.export.common import agreement, probe_prompts
    from ownllm.rundir import run_dir_of

    found = asdict(agreement(reference, candidate, tokenizer, probe_prompts(run_dir_of(source), tokenizer)))
    return {"vs_torch_fp32": found, "thresholds": thresholds,
            "passed": all(found[k] is not None and found[k] >= v for k, v in thresholds.items())}


def _bf16_if_verified(own, source: str):
    """The model in bf16 when a bf16 copy passes BF16_THRESHOLDS against it on the probe prompts, else as it is."""
    import torch

    candidate = copy.deepcopy(own.model).to(torch.bfloat16).eval()
    checks = verify(own.model, candidate, own.tokenizer, source, BF16_THRESHOLDS)
    if not checks["passed"]:
        del candidate
        return own, {"engine": "torch", "dtype": "fp32", "why": "bf16 changed greedy answers on the probe "
                                                                "prompts; fp32 kept", "checks": checks}
    own.model = candidate
    gc.collect()
    return own, {"engine": "torch", "dtype": "bf16", "why": "native bf16 on this CPU, verified against fp32",
                 "checks": checks}


def _dtype_name(own) -> str:
    import torch

    dtype = next(own.model.parameters()).dtype
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


# -- exports ---------------------------------------------------------------------------------------
def export_folder(source: str, leaf: str) -> str:
    """Where an engine's export of ``source`` lives: the run's export/ folder, or ownllm's cache for a model name."""
    from ownllm.export.export import default_out
    from ownllm.models.load import cache_dir, fingerprint
    from ownllm.rundir import RunDir, run_dir_of

    if run_dir_of(source) or os.path.isdir(RunDir(source).adapter_dir):
        return default_out(source, "gguf" if leaf.startswith("gguf") else leaf, leaf.removeprefix("gguf-"))
    return os.path.join(cache_dir("engines"), fingerprint(os.path.abspath(source) if os.path.exists(source) else source),
                        leaf)


def current_export(folder: str, source: str) -> bool:
    """True when ``folder`` holds an export whose checks passed and that is newer than the trained weights."""
    from ownllm.rundir import read_json, run_dir_of

    manifest = read_json(os.path.join(folder, "manifest.json"))
    if not manifest or not manifest.get("all_checks_passed"):
        return False
    run = run_dir_of(source)
    trained = run.trained_output() if run else None
    return not trained or os.path.getmtime(os.path.join(folder, "manifest.json")) >= os.path.getmtime(trained)


def _built(source: str, fmt: str, quant: str = "q8_0") -> str:
    """The export's folder, built (and checked) now unless a current one is there."""
    from ownllm.export.export import export

    folder = export_folder(source, f"gguf-{quant}" if fmt == "gguf" else fmt)
    if not current_export(folder, source):
        log.warning("ownllm: building the %s export in %s (once; its checks compare it with torch)", fmt, folder)
        export(source, fmt, out=folder, overwrite=True, quant=quant)
    return folder


def _onnx(source: str, build: bool):
    from ownllm.models.onnx_runtime import load_onnx

    require("onnxruntime", "--engine onnx", extra="onnx")
    folder = _built(source, "onnx") if build else export_folder(source, "onnx")
    return load_onnx(folder)


def _llamacpp(source: str, reference):
    from ownllm.models.llamacpp_runtime import load_llamacpp

    folder = _built(source, "gguf", "f16")
    gguf = next(os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".gguf"))
    model = load_llamacpp(gguf, reference)
    return model, verify(reference.model, model.model, reference.tokenizer, source, LLAMACPP_THRESHOLDS)


# -- auto ------------------------------------------------------------------------------------------
def _auto(source: str, device: str, dtype: str, merge: bool, load_kwargs: dict, concurrency: int = 1):
    """Every engine that is here and verified, timed on this machine as it will serve; the fastest serves."""
    torch_model, record = _torch(source, device, dtype, merge, load_kwargs)
    candidates, notes = {"torch": torch_model}, {"torch": record}
    small = torch_model.num_parameters() <= AUTO_EXPORT_MAX_PARAMS
    if find_spec("onnxruntime") is not None:
        try:
            if small or current_export(export_folder(source, "onnx"), source):
                candidates["onnx"] = _onnx(source, build=True)
                notes["onnx"] = {"checks": "the export's manifest: all checks passed"}
        except Exception as e:  # noqa: BLE001 — an engine that cannot be built is left out, and said why
            notes["onnx"] = {"left out": f"{type(e).__name__}: {e}"}
    if find_spec("llama_cpp") is not None and (small or current_export(export_folder(source, "gguf-f16"), source)):
        try:
            reference = torch_model if record.get("dtype") == "fp32" else None
            from ownllm.models.load import load_model

            reference = reference or load_model(source, device="cpu", dtype="fp32", merge=merge, **load_kwargs)
            model, checks = _llamacpp(source, reference)
            notes["llamacpp"] = {"checks": checks}
            if checks["passed"]:
                candidates["llamacpp"] = model
        except Exception as e:  # noqa: BLE001
            notes["llamacpp"] = {"left out": f"{type(e).__name__}: {e}"}
    speeds = {name: tokens_per_second(model, concurrency) for name, model in candidates.items()}
    best = max(speeds, key=speeds.get)
    for name in list(candidates):
        if name != best:
            del candidates[name]
    gc.collect()
    why = "the fastest verified engine here" + (f" with {concurrency} requests at once" if concurrency > 1 else "")
    record = {**notes[best], "engine": best, "why": why, "tokens_per_second": speeds, "considered": notes}
    if best == "torch":
        record["dtype"] = notes["torch"].get("dtype")
    return candidates[best], record


def tokens_per_second(own, concurrency: int = 1) -> float:
    """Greedy decoding speed of ``own`` on this machine, all requests together: ``concurrency`` requests of
    TIMING_TOKENS new tokens at once, through the batcher where the engine batches (as ``serve`` runs
    them) and one after another where it does not; after a short warm-up."""
    import threading

    from ownllm.models.batching import Batcher, can_batch

    settings = dict(temperature=0, max_new_tokens=TIMING_TOKENS)
    own.chat(TIMING_PROMPT, temperature=0, max_new_tokens=2)
    runner = Batcher(own, concurrency) if concurrency > 1 and can_batch(own) else own
    counts: list[int] = []

    def one():
        stats: dict = {}
        for _ in runner.stream(TIMING_PROMPT, chat=True, stats=stats, **settings):
            pass
        counts.append(stats.get("completion_tokens", 0))

    began = time.perf_counter()
    if runner is own:
        for _ in range(concurrency):
            one()
    else:
        threads = [threading.Thread(target=one) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return round(sum(counts) / (time.perf_counter() - began), 1)


def describe(record: dict) -> str:
    """One line for the terminal: the engine, its precision, why, and the speeds measured."""
    speeds = record.get("tokens_per_second")
    measured = ", ".join(f"{k} {v:g}" for k, v in speeds.items()) if speeds else ""
    dtype = f" ({record['dtype']})" if record.get("dtype") else ""
    return (f"engine: {record['engine']}{dtype} — {record['why']}" + (f"; tokens/s measured: {measured}" if measured
                                                                      else ""))
