"""`ownllm <command>`: one small function per command, and a dispatch table.

Nothing heavy is imported at module level, so `ownllm --help` starts without torch.
"""
from __future__ import annotations

import argparse
import os
import sys

from ownllm.errors import OwnLLMError


# -- foundation commands ---------------------------------------------------------------------
def cmd_models(args) -> int:
    from ownllm.models.registry import MODELS, format_params, is_available_here

    rows = [("alias", "hub id", "params", "context", "licence", "template", "here")]
    for s in MODELS.values():
        rows.append((s.alias, s.hub_id, format_params(s.params), f"{s.context:,}", s.licence, s.template,
                     ("yes (embedded)" if s.embedded else "yes (cache)") if is_available_here(s) else "no"))
    _print_table(rows)
    print("\nAlso accepted: a local Hugging Face folder, a .gguf file, or a hub id (org/name).")
    return 0


def cmd_doctor(args) -> int:
    from ownllm.doctor import report

    print(report())
    return 0


def _gen_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, max_length=args.max_length, temperature=args.temperature,
                top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop=args.stop or None)


def cmd_generate(args) -> int:
    from ownllm.models.generation import GenerationSettings
    from ownllm.models.load import load_model

    kwargs = _gen_kwargs(args)
    GenerationSettings.build(**kwargs)  # report bad values before the model loads
    model = load_model(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                       trust_remote_code=args.trust_remote_code)
    for piece in model.stream(args.prompt, system_prompt=args.system, chat=False if args.raw else None, **kwargs):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_chat(args) -> int:
    from ownllm.models.generation import GenerationSettings
    from ownllm.models.load import load_model

    kwargs = _gen_kwargs(args)
    GenerationSettings.build(**kwargs)
    model = load_model(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                       trust_remote_code=args.trust_remote_code)
    system, history = args.system, []
    print(f"{model.name} — type a message; /reset clears the conversation, /system TEXT sets the "
          "system prompt, /exit quits.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            continue
        history.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        answer = ""
        for piece in model.stream(history, system_prompt=system, **kwargs):
            answer += piece
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": answer})


def cmd_quantize(args) -> int:
    import os

    from ownllm.errors import ConfigError
    from ownllm.quantization.quantize import Quantizer

    if os.path.isdir(args.model):
        out = args.out or os.path.join(args.model, "export", f"q{args.bits}")
    else:
        out = args.out or os.path.join("runs", f"{os.path.basename(args.model.rstrip('/')).replace('/', '--')}-q{args.bits}")
    if os.path.exists(out) and not args.overwrite:
        raise ConfigError(f"{out} already exists", hint="pass --overwrite, or --out another folder")
    q = Quantizer(args.model, bits=args.bits, device=args.device).quantize()
    q.save(out)
    r = q.report
    print(f"{r['method']}: {r['size_mb_before']:.0f} MB → {r['size_mb_after']:.0f} MB ({r['size_change']:+.0%}); "
          f"perplexity {r['perplexity_before']:.3f} → {r['perplexity_after']:.3f} ({r['perplexity_change']:+.2%}) "
          f"on {r['perplexity_rows']} rows\nsaved {out} (load it with: ownllm chat {out})")
    return 0


def cmd_export(args) -> int:
    from ownllm.export.formats import export

    m = export(args.source, args.format, args.out, args.overwrite, quant=args.quant)
    for c in m["checks"]:
        print(f"  {'pass' if c['passed'] else 'FAIL'}  {c['name']}: {c['measured']} (tolerance {c['tolerance']})")
    size = sum(f["bytes"] for f in m["files"]) / 2**20
    print(f"exported {args.format} ({size:.0f} MB) to {m['path']}; manifest.json lists files, hashes and checks")
    if args.format == "onnx":
        print(f"run it: ownllm generate {m['path']}/model.onnx \"你好\"")
    elif args.format == "gguf":
        gguf_file = next(f["name"] for f in m["files"] if f["name"].endswith(".gguf"))
        print(f"use it: cd {m['path']} && ollama create {gguf_file.rsplit('-', 1)[0]} -f Modelfile "
              "(README.md there has the llama.cpp commands)")
    return 0


def _check_web_server(args, command: str) -> None:
    """What `serve` and `studio` both need: a valid --port and the web packages installed."""
    from ownllm.errors import ConfigError, require

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535 (got {args.port})")
    require("fastapi", command, extra="serve")
    require("uvicorn", command, extra="serve")


def cmd_studio(args) -> int:
    from ownllm.errors import ConfigError

    if os.path.exists(args.runs) and not os.path.isdir(args.runs):
        raise ConfigError(f"--runs {args.runs} is a file, not a folder")
    _check_web_server(args, "ownllm studio")
    from ownllm.studio.app import studio

    studio(args.runs, host=args.host, port=args.port, api_key=args.api_key or None,
           parallel_training=args.parallel_training)
    return 0


def cmd_serve(args) -> int:
    from ownllm.errors import ConfigError

    _check_web_server(args, "ownllm serve")
    if args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be at least 1 (got {args.max_concurrency})")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be at least 0 (got {args.max_queue})")
    if args.request_timeout <= 0:
        raise ConfigError("--request-timeout must be positive (seconds)")
    from ownllm.serving.app import serve

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or None,
          max_concurrency=args.max_concurrency, max_queue=args.max_queue, request_timeout=args.request_timeout,
          system=args.system, device=args.device, dtype=args.dtype)
    return 0


# -- argument parsing ------------------------------------------------------------------------
DTYPES = ["auto", "fp32", "bf16", "fp16"]
DTYPE_HELP = ("weights' precision (default auto: fp32 on a CPU, bf16/fp16 on a GPU); bf16 on a CPU with native bf16 "
              "(AVX512-BF16/AMX) generates ~1.6x faster (benchmarks/generate_speed.py)")

def _print_table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _add_model_args(p) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights from a folder you trust")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")


def _add_gen_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None, help="new tokens to generate (default 256)")
    p.add_argument("--max-length", type=int, default=None, help="your prompt's tokens + new tokens")
    p.add_argument("--temperature", type=float, default=0.7, help="0..2; 0 is greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling, (0, 1] (default 0.9)")
    p.add_argument("--top-k", type=int, default=50, help="top-k sampling, 0 disables (default 50)")
    p.add_argument("--repetition-penalty", type=float, default=1.1, help="(0, 5], 1 disables (default 1.1)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--stop", action="append", help="stop at this string (repeatable)")
    p.add_argument("--system", default=None, help="system prompt, e.g. \"你是一个专业的医疗问诊助手\"")


def build_parser() -> argparse.ArgumentParser:
    from ownllm import __version__
    from ownllm.models.registry import DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="ownllm", description="Turn your own domain data into your own LLM: prepare, plan, train, "
        "evaluate, export and serve it.")
    parser.add_argument("--version", action="version", version=f"ownllm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the model registry and what is available here")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("doctor", help="check this machine: python, torch, GPU, RAM, disk, packages")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("model", help=f"alias (e.g. {DEFAULT_MODEL}), run dir, HF folder, .gguf file or hub id")
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="plain continuation, no chat template")
    _add_gen_args(p)
    _add_model_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat with a model in the terminal (/reset, /system, /exit)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    _add_gen_args(p)
    _add_model_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("quantize", help="quantize a model or run to 8-bit or 4-bit (bitsandbytes) and measure it")
    p.add_argument("model", help="run directory (adapter merged first), alias, HF folder, .gguf or hub id")
    p.add_argument("--bits", type=int, choices=[4, 8], default=4, help="4 (NF4, double quantisation) or 8 (LLM.int8)")
    p.add_argument("--out", help="output folder (default RUN_DIR/export/qBITS or runs/MODEL-qBITS)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="export a run or model as merged safetensors, adapter, ONNX or GGUF, verified")
    p.add_argument("source", metavar="RUN_DIR|MODEL", help="run directory (or, for onnx/gguf, any model name)")
    p.add_argument("--format", default="merged", choices=["merged", "adapter", "onnx", "gguf"],
                   help="merged: adapter folded into the base weights; adapter: the adapter alone; "
                        "onnx: model.onnx with past key/values for onnxruntime; gguf: llama.cpp/Ollama file "
                        "with a Modelfile")
    p.add_argument("--quant", default="q8_0", choices=["f16", "q8_0", "q4_0"], help="GGUF weight format (default q8_0)")
    p.add_argument("--out", help="output folder (default RUN_DIR/export/FORMAT, gguf-QUANT for gguf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve a model behind an OpenAI-compatible API with a web chat page")
    p.add_argument("model", metavar="RUN_DIR|MODEL|EXPORT",
                   help="run directory, merged or quantized export folder, model.onnx, or any model name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("OWNLLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on the API (default $OWNLLM_API_KEY)")
    p.add_argument("--max-concurrency", type=int, default=4, help="generations at once (default 4)")
    p.add_argument("--max-queue", type=int, default=32, help="requests that may wait; more get 429 (default 32)")
    p.add_argument("--request-timeout", type=float, default=120, help="seconds before a request is ended (default 120)")
    p.add_argument("--system", default=None, help="system prompt for chats that bring none")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("studio", help="the whole flow in a web page: data, plan, train, report and chat, export",
                       description="Opens a page where you upload data, see the data doctor's report, plan, train "
                                   "(live curves, stop and resume), compare base and tuned, and export. Runs are "
                                   "the same run directories the CLI makes; training goes on if the page closes.")
    p.add_argument("--runs", default="runs", help="folder of run directories (default runs/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--api-key", default=os.environ.get("OWNLLM_API_KEY"),
                   help="require this key in the page's API calls (default $OWNLLM_API_KEY)")
    p.add_argument("--parallel-training", action="store_true", help="allow more than one training at a time")
    p.set_defaults(func=cmd_studio)

    from ownllm import cli_plan, cli_train

    cli_train.register(sub)
    cli_plan.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except OwnLLMError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if args.debug:
            raise
        import errno

        if e.errno == errno.ENOSPC:
            print(f"error: the disk is full ({e.filename or 'while writing'}); free some space and retry",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
