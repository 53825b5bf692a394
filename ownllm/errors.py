"""Errors a person can cause, written for that person.

Every error names *what* is wrong, *where* (file, line, field) and *what to do*. The CLI prints
``str(error)`` and exits non-zero; ``--debug`` shows the traceback.
"""
from __future__ import annotations


class OwnLLMError(Exception):
    """Base class: a problem the user can fix. ``hint`` says how."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None):
        self.message = message
        self.hint = hint
        self.where = where
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(OwnLLMError):
    """Bad flags or configuration values. Collects several problems and reports them at once."""

    def __init__(self, problems: list[str] | str, *, hint: str | None = None, where: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, hint=hint, where=where)


class DataError(OwnLLMError):
    """A dataset file or row that cannot be used."""


class ModelNotFoundError(OwnLLMError):
    """A model alias, folder, file or hub id that cannot be loaded here."""


class HardwareError(OwnLLMError):
    """An option the hardware cannot honour (fp16 on a CPU, CUDA without a GPU...)."""


class DiskFullError(OwnLLMError):
    """The disk filled up while writing; what was there before is intact."""


class MissingDependencyError(OwnLLMError):
    """An optional package is not installed."""

    def __init__(self, package: str, purpose: str, extra: str | None = None):
        install = f"pip install 'ownllm[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the package '{package}', which is not installed.",
                         hint=f"run: {install}")


def explain_cpu_4bit_kernel() -> None:
    """Where 4-bit weights are used: import bitsandbytes and, if it could not fetch its faster CPU
    kernel from the hub (see ``ownllm._HubKernelNotice``), say once what that means."""
    import sys

    import torch

    import ownllm

    require("bitsandbytes", "4-bit weights", extra="quant")
    said = getattr(explain_cpu_4bit_kernel, "said", False)
    if ownllm._HubKernelNotice.seen and not torch.cuda.is_available() and not said:
        explain_cpu_4bit_kernel.said = True
        print("note: bitsandbytes uses its built-in CPU kernel for 4-bit weights (its faster one would be downloaded "
              "from the Hugging Face hub, which ownllm does not do); results are the same, only slower",
              file=sys.stderr)


def require(module: str, purpose: str, package: str | None = None, extra: str | None = None):
    """Import an optional dependency or raise a MissingDependencyError naming the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package or module, purpose, extra) from None
