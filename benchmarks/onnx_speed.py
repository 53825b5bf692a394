"""ONNX Runtime vs torch generation speed for the same model on this machine (greedy, batch 1).

    python benchmarks/onnx_speed.py [--model smollm2-135m] [--tokens 64] [--rounds 3]

Exports the model to ONNX in a temporary folder (checked by the exporter), then alternates torch
and onnxruntime generation of the same prompt and prints tokens/s for both and the ratio.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _args import generation_args  # noqa: E402 (benchmarks/, the script's own folder)


def main() -> None:
    args = generation_args(__doc__)

    from ownllm.export.export import export
    from ownllm.models.load import load_model

    prompt = "Write a short paragraph about the history of tea."
    torch_model = load_model(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export(args.model, "onnx", os.path.join(tmp, "onnx"))
        print(f"export + checks: {time.perf_counter() - t0:.1f} s")
        onnx_model = load_model(os.path.join(tmp, "onnx", "model.onnx"))
        kw = dict(temperature=0, max_new_tokens=args.tokens, repetition_penalty=1.0)
        speeds = {"torch": [], "onnxruntime": []}
        for _ in range(args.rounds):
            for name, m in (("torch", torch_model), ("onnxruntime", onnx_model)):
                t = time.perf_counter()
                text = m.generate(prompt, **kw)
                n = len(m.tokenizer(text, add_special_tokens=False)["input_ids"])
                speeds[name].append(n / (time.perf_counter() - t))
    best = {k: max(v) for k, v in speeds.items()}
    for k, v in best.items():
        print(f"{k:12s} {v:7.1f} tokens/s (best of {args.rounds})")
    print(f"ratio onnxruntime / torch: {best['onnxruntime'] / best['torch']:.2f}")


if __name__ == "__main__":
    main()
