"""`ownllm quantize | export`: smaller and portable copies of a run or model, each measured."""
from __future__ import annotations

import os


def cmd_quantize(args) -> int:
    from ownllm.errors import ConfigError
    from ownllm.quantization.quantize import Quantizer

    from ownllm.rundir import RunDir

    if os.path.isdir(args.model):
        out = args.out or RunDir(args.model).export(f"q{args.bits}")
    else:
        out = args.out or RunDir.under_runs(f"{os.path.basename(args.model.rstrip('/')).replace('/', '--')}-q{args.bits}").path
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
    from ownllm.config import values_from_args
    from ownllm.export.export import ExportConfig, export
    from ownllm.export.manifest import describe, status

    cfg = ExportConfig(**values_from_args(args, ExportConfig))
    m = export(args.source, cfg.format, cfg.out, cfg.overwrite, quant=cfg.quant)
    for c in m["checks"]:
        print(f"  {status(c)}  {c['name']}: {describe(c)}")
    size = sum(f["bytes"] for f in m["files"]) / 2**20
    print(f"exported {cfg.format} ({size:.0f} MB) to {m['path']}; manifest.json lists files, hashes and checks")
    if cfg.format == "onnx":
        print(f"run it: ownllm generate {m['path']}/model.onnx \"你好\"")
    elif cfg.format == "gguf":
        gguf_file = next(f["name"] for f in m["files"] if f["name"].endswith(".gguf"))
        print(f"use it: cd {m['path']} && ollama create {gguf_file.rsplit('-', 1)[0]} -f Modelfile "
              "(README.md there has the llama.cpp commands)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model or run to 8-bit or 4-bit (bitsandbytes) and measure it")
    p.add_argument("model", help="run directory (adapter merged first), alias, HF folder, .gguf or hub id")
    p.add_argument("--bits", type=int, choices=[4, 8], default=4, help="4 (NF4, double quantisation) or 8 (LLM.int8)")
    p.add_argument("--out", help="output folder (default RUN_DIR/export/qBITS or runs/MODEL-qBITS)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="export a run or model as merged safetensors, adapter, ONNX or GGUF, verified")
    p.add_argument("source", metavar="RUN_DIR|MODEL", help="run directory (or, for onnx/gguf, any model name)")
    from ownllm.config import add_flags
    from ownllm.export.export import ExportConfig

    add_flags(p, ExportConfig)
    p.set_defaults(func=cmd_export)
