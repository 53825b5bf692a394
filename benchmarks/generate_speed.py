"""ownllm generation on each engine vs plain transformers `generate`, base and tuned, against the bandwidth limit.

    python benchmarks/generate_speed.py [--model smollm2-135m] [--run runs/demo] [--tokens 64] [--rounds 3]

Greedy, batch 1, the same prompt, ``--tokens`` new tokens (``min_new_tokens`` for transformers; ownllm
stops at the end of an answer, so its tokens are counted). Decoding one token reads every weight once,
so the speed limit is bandwidth / weight bytes; the bandwidth is measured with a 1 GiB tensor copy
(bytes read + written per second). Sides, run alternately, best of ``--rounds``:

- ``hf fp32``: ``AutoModelForCausalLM`` + ``model.generate`` — the baseline;
- ``torch fp32`` / ``torch bf16`` (where the CPU has native bf16) / ``onnx``: ownllm's engines
  (``ownllm serve --engine ...``), for the base model and, when ``--run`` exists, for the tuned run as
  `serve` loads it (its adapter folded into the weights; the ONNX export built once into the run).

Prints tokens/s, × vs hf, % of the bandwidth limit, tuned / base at the same engine (target ≥ 0.95),
and which engine ``--engine auto`` picks here with its × vs hf (target ≥ 2.5×).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _args import generation_args  # noqa: E402 (benchmarks/, the script's own folder)


def copy_bandwidth_gbs(gib: float = 1.0, rounds: int = 5) -> float:
    import torch

    a = torch.ones(int(gib * 2**30) // 4)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best / 1e9


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():  # tied embeddings count once: they are read once per token
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def load_sides(source: str, label: str) -> dict:
    """ownllm's engines for ``source``, as ``serve --engine`` loads them."""
    from importlib.util import find_spec

    from ownllm.device import cpu_has_fast_bf16
    from ownllm.serving.engines import load_engine

    sides = {f"{label} torch fp32": load_engine(source, "torch", dtype="fp32")[0]}
    if cpu_has_fast_bf16():
        sides[f"{label} torch bf16"] = load_engine(source, "torch", dtype="bf16")[0]
    if find_spec("onnxruntime") is not None:
        sides[f"{label} onnx"] = load_engine(source, "onnx")[0]
    return sides


def main() -> None:
    args = generation_args(__doc__, run=True)

    import torch
    from transformers import AutoModelForCausalLM

    from ownllm.models.load import local_folder, resolve
    from ownllm.serving.engines import load_engine

    folder = local_folder(resolve(args.model))
    ours = load_sides(args.model, "base")
    tuned = os.path.isdir(args.run)
    if tuned:
        ours.update(load_sides(args.run, "tuned"))
    else:
        print(f"no tuned run at {args.run} (make demo makes runs/demo): base model only")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    first = next(iter(ours.values()))
    tok = first.tokenizer
    question = "Write a long story about a dragon who learns to cook."
    enc = tok(first.render_chat(question), return_tensors="pt", add_special_tokens=False)
    n_prompt = enc["input_ids"].shape[1]

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                              pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, n_prompt:], skip_special_tokens=True)

    def run_ours(model):
        return model.generate(question, max_new_tokens=args.tokens, temperature=0, repetition_penalty=1.0)

    sides = {"hf fp32": run_hf, **{name: (lambda m=m: run_ours(m)) for name, m in ours.items()}}
    speeds, texts = {k: [] for k in sides}, {}
    for name, fn in sides.items():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in sides.items():
            t = time.perf_counter()
            texts[name] = fn()
            seconds = time.perf_counter() - t
            n = args.tokens if name == "hf fp32" else len(tok(texts[name], add_special_tokens=False)["input_ids"])
            speeds[name].append(n / seconds)  # ownllm stops at the end of an answer: count what it made
    bandwidth = copy_bandwidth_gbs()
    print(f"model {args.model}, prompt {n_prompt} tokens, {args.tokens} new tokens, greedy, batch 1, "
          f"{torch.get_num_threads()} threads")
    print(f"memory bandwidth (1 GiB copy): {bandwidth:.1f} GB/s")
    base = max(speeds["hf fp32"])
    fp32_bytes = weight_bytes(hf)
    for name, v in speeds.items():
        model = hf if name == "hf fp32" else ours[name].model
        size = weight_bytes(model) if hasattr(model, "parameters") and any(True for _ in model.parameters()) else fp32_bytes
        limit = bandwidth * 1e9 / size  # an ONNX graph holds fp32 weights
        n = args.tokens if name == "hf fp32" else len(tok(texts[name], add_special_tokens=False)["input_ids"])
        print(f"{name:17s} {max(v):6.1f} tokens/s (best of {args.rounds})  ×{max(v) / base:.2f} vs hf  "
              f"{max(v) / limit:5.1%} of the bandwidth limit ({limit:.0f} tokens/s for {size / 1e6:.0f} MB of "
              f"weights); {n} tokens")
    if tuned:
        for name in [k for k in speeds if k.startswith("tuned ")]:
            other = "base " + name[len("tuned "):]
            print(f"tuned / base, {name[len('tuned '):]}: {max(speeds[name]) / max(speeds[other]):.2f}")
    del ours
    for source, label in [(args.model, "base")] + [(args.run, "tuned")] * tuned:
        _, record = load_engine(source, "auto")
        engine = record["engine"] + (f" {record['dtype']}" if record.get("dtype") else "")
        timing = ", ".join(f"{k} {v:g}" for k, v in record["tokens_per_second"].items())
        measured = speeds.get(f"{label} {engine}")
        print(f"--engine auto picks {engine} for the {label} model here ({timing} tokens/s in its own timing)"
              + (f": ×{max(measured) / base:.2f} vs hf above" if measured else ""))


if __name__ == "__main__":
    main()
