"""`ownllm serve | studio`: the two web servers."""
from __future__ import annotations

import os


def check_web_server(args, command: str) -> None:
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
    check_web_server(args, "ownllm studio")
    from ownllm.studio.app import studio

    if args.request_timeout <= 0:
        raise ConfigError("--request-timeout must be positive (seconds)")
    roots = args.data_root or [os.getcwd()]
    for root in roots:
        if not os.path.isdir(root):
            raise ConfigError(f"--data-root {root} is not a folder")
    studio(args.runs, host=args.host, port=args.port, api_key=args.api_key or None,
           parallel_training=args.parallel_training, data_roots=roots, allowed_hosts=tuple(args.allowed_host or ()),
           request_timeout=args.request_timeout)
    return 0


def cmd_serve(args) -> int:
    from ownllm.errors import ConfigError

    check_web_server(args, "ownllm serve")
    if args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be at least 1 (got {args.max_concurrency})")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be at least 0 (got {args.max_queue})")
    if args.request_timeout <= 0:
        raise ConfigError("--request-timeout must be positive (seconds)")
    if args.max_request_bytes is not None and args.max_request_bytes < 1024:
        raise ConfigError(f"--max-request-bytes must be at least 1024 (got {args.max_request_bytes})")
    from ownllm.serving.app import serve

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or None,
          max_concurrency=args.max_concurrency, max_queue=args.max_queue, request_timeout=args.request_timeout,
          system=args.system, device=args.device, dtype=args.dtype, allowed_hosts=tuple(args.allowed_host or ()),
          max_request_bytes=args.max_request_bytes, merge=not args.no_merge, engine=args.engine,
          batching=not args.no_batching)
    return 0


def register(sub) -> None:
    from ownllm.cli.common import DTYPE_HELP, DTYPES, add_engine_arg, add_merge_arg

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
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="another host name clients may use to reach this server (repeatable); requests naming "
                        "any other name in Host are refused, which stops DNS-rebinding pages")
    p.add_argument("--max-request-bytes", type=int, default=None,
                   help="largest request body (default: room for the model's whole context, at least 1 MiB)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE_HELP)
    add_engine_arg(p)
    p.add_argument("--no-batching", action="store_true",
                   help="one generate() per request instead of concurrent requests sharing decode steps")
    add_merge_arg(p)
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
    p.add_argument("--data-root", action="append", metavar="FOLDER",
                   help="a folder whose files (data, models) the page may use by path (repeatable; default: the "
                        "folder the studio starts in); the runs folder and uploads are always allowed")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="another host name clients may use to reach this server (repeatable); requests naming "
                        "any other name in Host are refused, which stops DNS-rebinding pages")
    p.add_argument("--request-timeout", type=float, default=120,
                   help="seconds before a chat question (both answers) is ended (default 120)")
    p.set_defaults(func=cmd_studio)
