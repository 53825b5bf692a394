"""What a person sets when starting either web server: ``ServeConfig`` (`ownllm serve`) and ``StudioConfig``
(`ownllm studio`). Their fields are the commands' flags (``ownllm.config.add_flags``); ``validate()``
reports every mistake at once. Light: importing it imports no web framework (``ownllm --help`` reads it)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ownllm.config import setting
from ownllm.errors import ConfigError

HOST_HELP = "address to listen on (default 127.0.0.1: this machine only)"
ALLOWED_HOST_HELP = ("another host name clients may use to reach this server (repeatable); requests naming any other "
                     "name in Host are refused, which stops DNS-rebinding pages")


def _check_common(cfg, p: list[str]) -> None:
    if not isinstance(cfg.port, int) or not 1 <= cfg.port <= 65535:
        p.append(f"--port must be between 1 and 65535 (got {cfg.port})")
    if cfg.request_timeout <= 0:
        p.append("--request-timeout must be positive (seconds)")


@dataclass
class ConnectionLimits:
    """What a connection may hold of either server (slow clients): both commands take these flags."""
    max_connections: int = setting(500, "open connections at most; past it the connection idle longest, or still "
                                        "sending its request, is closed for the new one (default 500)")
    header_timeout: float = setting(10.0, "seconds a request's line and headers may take to arrive (default 10); a "
                                          "client that trickles them is answered 408 and closed")
    body_timeout: float = setting(30.0, "seconds a request body may take to arrive (default 30; an upload: between "
                                        "two of its pieces)")

    def validate(self) -> "ConnectionLimits":
        p = []
        if self.max_connections < 2:
            p.append(f"--max-connections must be at least 2 (got {self.max_connections})")
        p += [f"--{name.replace('_', '-')} must be positive (seconds)"
              for name in ("header_timeout", "body_timeout") if getattr(self, name) <= 0]
        if p:
            raise ConfigError(p)
        return self


@dataclass
class ServeConfig:
    """`ownllm serve`'s server settings (the model's own loading flags are `generate`'s and `chat`'s)."""
    host: str = setting("127.0.0.1", HOST_HELP)
    port: int = setting(8000, "port (default 8000)")
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' on the API (default $OWNLLM_API_KEY)")
    max_concurrency: int = setting(4, "generations at once (default 4)")
    max_queue: int = setting(32, "requests that may wait; more get 429 (default 32)")
    request_timeout: float = setting(120.0, "seconds before a request is ended (default 120)")
    system: str | None = setting(None, "system prompt for chats that bring none")
    allowed_host: list[str] = setting([], ALLOWED_HOST_HELP, metavar="NAME")
    max_request_bytes: int | None = setting(None, "largest request body (default: room for the model's whole "
                                                  "context, at least 1 MiB)")
    no_batching: bool = setting(False, "one generate() per request instead of concurrent requests sharing decode steps")
    max_tokens: int | None = setting(None, "the most new tokens a request may ask for (default: the model's context)")
    feedback: str | None = setting(None, "where POST /v1/feedback rows go (default: RUN/feedback.jsonl when serving "
                                         "a run directory; otherwise the route answers 404)", metavar="FILE")

    def validate(self) -> "ServeConfig":
        p: list[str] = []
        _check_common(self, p)
        if self.max_concurrency < 1:
            p.append(f"--max-concurrency must be at least 1 (got {self.max_concurrency})")
        if self.max_queue < 0:
            p.append(f"--max-queue must be at least 0 (got {self.max_queue})")
        if self.max_request_bytes is not None and self.max_request_bytes < 1024:
            p.append(f"--max-request-bytes must be at least 1024 (got {self.max_request_bytes})")
        if self.max_tokens is not None and self.max_tokens < 1:
            p.append(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        if p:
            raise ConfigError(p)
        self.api_key = self.api_key or os.environ.get("OWNLLM_API_KEY") or None
        return self


@dataclass
class StudioConfig:
    """`ownllm studio`'s settings."""
    runs: str = setting("runs", "folder of run directories (default runs/)")
    host: str = setting("127.0.0.1", HOST_HELP)
    port: int = setting(7860, "port (default 7860)")
    api_key: str | None = setting(None, "require this key in the page's API calls (default $OWNLLM_API_KEY)")
    parallel_training: bool = setting(False, "allow more than one training at a time")
    data_root: list[str] = setting([], "a folder whose files (data, models) the page may use by path (repeatable; "
                                       "default: the folder the studio starts in); the runs folder and uploads are "
                                       "always allowed", metavar="FOLDER")
    allowed_host: list[str] = setting([], ALLOWED_HOST_HELP, metavar="NAME")
    request_timeout: float = setting(120.0, "seconds before a chat question (both answers) is ended (default 120)")
    teacher: list[str] = setting([], "a teacher URL the documents step may use (repeatable; none by default: the "
                                     "page cannot send documents to a host you did not name)", metavar="URL")
    teacher_key_env: list[str] = setting([], "an environment variable the documents step may send to a teacher as "
                                             "its key (repeatable)", metavar="NAME")
    job_memory: float | None = setting(None, "GB of memory a job (training, evaluation, export, documents) or a data "
                                             "preparation may use; past it, it is stopped with a message (default: "
                                             "80%% of this machine's memory)", metavar="GB")

    def validate(self) -> "StudioConfig":
        p: list[str] = []
        _check_common(self, p)
        if os.path.exists(self.runs) and not os.path.isdir(self.runs):
            p.append(f"--runs {self.runs} is a file, not a folder")
        p += [f"--data-root {root} is not a folder" for root in self.data_root if not os.path.isdir(root)]
        if self.job_memory is not None and self.job_memory <= 0:
            p.append(f"--job-memory must be positive (GB; got {self.job_memory})")
        if p:
            raise ConfigError(p)
        self.api_key = self.api_key or os.environ.get("OWNLLM_API_KEY") or None
        self.data_root = self.data_root or [os.getcwd()]
        return self
