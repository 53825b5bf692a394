"""What several command groups share: model and generation flags, tables, web-server checks."""
from __future__ import annotations

DTYPES = ["auto", "fp32", "bf16", "fp16"]
DTYPE_HELP = ("weights' precision (default auto: fp32 on a CPU, bf16/fp16 on a GPU; `serve` and `chat` use bf16 on a "
              "CPU with native bf16 when it gives fp32's answers); bf16 on a CPU with native bf16 (AVX512-BF16/AMX) "
              "generates ~1.5x faster (benchmarks/generate_speed.py)")


def print_table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def add_model_args(p) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights from a folder you trust")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")
    add_merge_arg(p)


def add_merge_arg(p) -> None:
    p.add_argument("--no-merge", action="store_true",
                   help="keep a run's LoRA/DoRA adapter unmerged (by default it is folded into the weights in "
                        "memory, checked, so the tuned model generates as fast as the base model)")


def add_engine_arg(p) -> None:
    from ownllm.serving.engines import ENGINES  # a light module: --help imports no torch

    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="what generates: torch (transformers; bf16 on a CPU with native bf16 when it gives fp32's "
                        "answers), onnx (onnxruntime on the run's ONNX export, built once), llamacpp (llama.cpp on "
                        "its f16 GGUF export; pip install llama-cpp-python); auto (default): the fastest of those "
                        "installed that pass their check against torch, timed here")


def add_gen_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None, help="new tokens to generate (default 256)")
    p.add_argument("--max-length", type=int, default=None, help="your prompt's tokens + new tokens")
    p.add_argument("--temperature", type=float, default=0.7, help="0..2; 0 is greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling, (0, 1] (default 0.9)")
    p.add_argument("--top-k", type=int, default=50, help="top-k sampling, 0 disables (default 50)")
    p.add_argument("--repetition-penalty", type=float, default=1.1, help="(0, 5], 1 disables (default 1.1)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--stop", action="append", help="stop at this string (repeatable)")
    p.add_argument("--system", default=None, help="system prompt, e.g. \"你是一个专业的医疗问诊助手\"")




def gen_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, max_length=args.max_length, temperature=args.temperature,
                top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop=args.stop or None)
