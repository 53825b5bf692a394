"""ownllm generation vs plain transformers `generate`, and both against this machine's memory bandwidth.

    python benchmarks/generate_speed.py [--model smollm2-135m] [--tokens 64] [--rounds 3]

Greedy, batch 1, the same model folder and prompt, exactly ``--tokens`` new tokens on every side
(``min_new_tokens`` for transformers; ownllm's answer is checked to be the same text). Decoding one
token reads every weight once, so the speed limit is bandwidth / weight bytes; the bandwidth is
measured with a 1 GiB tensor copy (bytes read + written per second). Sides, run alternately:

- ``hf fp32``: ``AutoModelForCausalLM`` + ``model.generate`` — the baseline;
- ``ownllm fp32``: ``load_model(...).generate(...)`` with its defaults on a CPU (chat template, stop
  handling, its logits processors);
- ``ownllm bf16``: the same with ``dtype="bf16"`` (``--dtype bf16`` in the CLI), only where the CPU
  (or GPU) has native bf16; its greedy agreement with fp32 is printed.
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


def main() -> None:
    args = generation_args(__doc__)

    import torch
    from transformers import AutoModelForCausalLM

    from ownllm.models.load import load_model, local_folder, resolve
    from ownllm.planning.hardware import cpu_has_fast_bf16

    folder = local_folder(resolve(args.model))
    ours = {"ownllm fp32": load_model(args.model, device="cpu", dtype="fp32")}
    if cpu_has_fast_bf16():
        ours["ownllm bf16"] = load_model(args.model, device="cpu", dtype="bf16")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = ours["ownllm fp32"].tokenizer
    question = "Write a long story about a dragon who learns to cook."
    enc = tok(ours["ownllm fp32"].render_chat(question), return_tensors="pt", add_special_tokens=False)
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
    for name, v in speeds.items():
        model = hf if name == "hf fp32" else ours[name].model
        limit = bandwidth * 1e9 / weight_bytes(model)
        n = args.tokens if name == "hf fp32" else len(tok(texts[name], add_special_tokens=False)["input_ids"])
        print(f"{name:12s} {max(v):6.1f} tokens/s (best of {args.rounds})  ×{max(v) / base:.2f} vs hf  "
              f"{max(v) / limit:5.1%} of the bandwidth limit ({limit:.0f} tokens/s for "
              f"{weight_bytes(model) / 1e6:.0f} MB of weights); {n} tokens, same text as hf: "
              f"{texts[name].strip() == texts['hf fp32'].strip()}")


if __name__ == "__main__":
    main()
