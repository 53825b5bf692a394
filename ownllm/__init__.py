"""ownllm: turn your own domain data into your own LLM.

The guide's Python API works with ``import ownllm as deepseek``::

    model = deepseek.load_model("smollm2-135m")
    print(model.generate("人工智能的未来是", max_length=20))

The four stages are public too: ``prepare_dataset`` → ``plan_run`` → ``train_run`` → ``evaluate``
(docs/architecture.md), with ``RunDir`` for what they leave in a run directory.

Nothing heavy is imported here: names are loaded on first use.
"""
from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

_LAZY = {
    "load_model": "ownllm.models.load",
    "OwnModel": "ownllm.models.generation",
    "OwnLLMError": "ownllm.errors",
    "clean_text": "ownllm.data.clean",
    "prepare_dataset": "ownllm.data.prepare",
    "Trainer": "ownllm.training.trainer",
    "evaluate": "ownllm.evaluation.evaluate",
    "plan_run": "ownllm.training.plan",
    "train_run": "ownllm.training.train",
    "RunDir": "ownllm.rundir",
    "Quantizer": "ownllm.quantization.quantize",
    "ONNXExporter": "ownllm.export.onnx",
}

__all__ = sorted(_LAZY) + ["__version__"]


class _HubKernelNotice(logging.Filter):
    """On CPUs with AVX512-BF16, importing bitsandbytes (peft does, always) asks the Hugging Face hub
    for a faster 4-bit kernel and, offline, logs a warning about "publisher trust status" that reads
    like a security alert about the person's model. Held back here; where 4-bit weights are really
    used, :func:`ownllm.errors.explain_cpu_4bit_kernel` says in one line what it means."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "kernels-community" in str(record.msg):
            _HubKernelNotice.seen = True
            return False
        return True


# bitsandbytes' own line, and (kernels >= 0.19, offline) the kernels package's "Skipping publisher trust check"
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_HubKernelNotice())


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ownllm' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
