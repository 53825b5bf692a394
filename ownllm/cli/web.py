"""`ownllm serve | studio`: the two web servers. Their flags come from ``web.settings``' dataclasses."""
from __future__ import annotations

from ownllm.config import add_flags, values_from_args


def require_web_packages(command: str) -> None:
    """What `serve` and `studio` both need: the web packages installed."""
    from ownllm.errors import require

    require("fastapi", command, extra="serve")
    require("uvicorn", command, extra="serve")


def warn_key_on_command_line(args) -> None:
    """A key given as --api-key shows in `ps` to every user of the machine: say so (the variable does not)."""
    import sys

    if getattr(args, "api_key", None):
        print("warning: --api-key on the command line is visible to other users of this machine (ps, /proc); "
              "set OWNLLM_API_KEY instead", file=sys.stderr, flush=True)


def connection_limits(args):
    """The slow-client limits both servers take (``web.settings.ConnectionLimits``), checked."""
    from ownllm.web.settings import ConnectionLimits

    return ConnectionLimits(**values_from_args(args, ConnectionLimits)).validate()


def cmd_studio(args) -> int:
    from ownllm.web.settings import StudioConfig

    cfg = StudioConfig(**values_from_args(args, StudioConfig)).validate()
    limits = connection_limits(args)
    warn_key_on_command_line(args)
    require_web_packages("ownllm studio")
    from ownllm.studio.app import studio
    from ownllm.studio.memory import limit_from_gb

    studio(cfg.runs, host=cfg.host, port=cfg.port, api_key=cfg.api_key, parallel_training=cfg.parallel_training,
           data_roots=cfg.data_root, allowed_hosts=tuple(cfg.allowed_host), request_timeout=cfg.request_timeout,
           teachers=cfg.teacher, teacher_key_envs=cfg.teacher_key_env, limits=limits,
           job_memory=limit_from_gb(cfg.job_memory))
    return 0


def cmd_serve(args) -> int:
    from ownllm.web.settings import ServeConfig

    cfg = ServeConfig(**values_from_args(args, ServeConfig)).validate()
    limits = connection_limits(args)
    warn_key_on_command_line(args)
    require_web_packages("ownllm serve")
    from ownllm.serving.app import serve

    serve(args.model, host=cfg.host, port=cfg.port, api_key=cfg.api_key, max_concurrency=cfg.max_concurrency,
          max_queue=cfg.max_queue, request_timeout=cfg.request_timeout, system=cfg.system, device=args.device,
          dtype=args.dtype, allowed_hosts=tuple(cfg.allowed_host), max_request_bytes=cfg.max_request_bytes,
          merge=not args.no_merge, engine=args.engine, batching=not cfg.no_batching, max_tokens=cfg.max_tokens,
          limits=limits, feedback=cfg.feedback)
    return 0


def register(sub) -> None:
    from ownllm.cli.common import DTYPE_HELP, DTYPES, add_engine_arg, add_merge_arg
    from ownllm.web.settings import ConnectionLimits, ServeConfig, StudioConfig

    p = sub.add_parser("serve", help="serve a model behind an OpenAI-compatible API with a web chat page")
    p.add_argument("model", metavar="RUN_DIR|MODEL|EXPORT",
                   help="run directory, merged or quantized export folder, model.onnx, or any model name")
    add_flags(p, ServeConfig)
    add_flags(p, ConnectionLimits)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    add_engine_arg(p)
    add_merge_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("studio", help="the whole flow in a web page: data, plan, train, report and chat, export",
                       description="Opens a page where you upload data, see the data doctor's report, plan, train "
                                   "(live curves, stop and resume), compare base and tuned, and export. Runs are "
                                   "the same run directories the CLI makes; training goes on if the page closes.")
    add_flags(p, StudioConfig)
    add_flags(p, ConnectionLimits)
    p.set_defaults(func=cmd_studio)
