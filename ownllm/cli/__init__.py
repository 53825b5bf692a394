"""`ownllm <command>`: thin functions that parse flags and call the library, one module per group.

``models`` (models, doctor, generate, chat), ``data_train`` (data, train, eval, compare,
quickstart), ``plan``, ``export`` (quantize, export) and ``web`` (serve, studio). Nothing heavy is
imported at module level, so `ownllm --help` starts without torch.
"""
from __future__ import annotations

import argparse
import signal
import sys

from ownllm.errors import OwnLLMError


def build_parser() -> argparse.ArgumentParser:
    from ownllm import __version__

    parser = argparse.ArgumentParser(
        prog="ownllm", description="Turn your own domain data into your own LLM: prepare, plan, train, "
        "evaluate, export and serve it.")
    parser.add_argument("--version", action="version", version=f"ownllm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from ownllm.cli import data_train, export, models, plan, web

    for group in (models, export, web, data_train, plan):
        group.register(sub)
    return parser


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt  # `kill`, `timeout`, a container's stop: end as Ctrl-C does (training saves first)


def main(argv: list[str] | None = None) -> int:
    try:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    except ValueError:  # not the main thread (called from a test's thread): leave signals alone
        pass
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
