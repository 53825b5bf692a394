"""The guide's ``Quantizer``: bitsandbytes 8-bit (LLM.int8) or 4-bit (NF4 + double quantisation).

bitsandbytes runs on CPUs and GPUs. We print what we measure — size before and after and the
perplexity change on a held-out sample — instead of the guide's "-75% size, <1% loss".
"""
from __future__ import annotations

import json
import os
import tempfile

from ownllm.errors import ConfigError, explain_cpu_4bit_kernel, require
from ownllm.evaluation.measure import perplexity_on_rows, sample_rows
from ownllm.models.generation import OwnModel


class QuantizedModel(OwnModel):
    """A quantized model: ``generate``/``chat``/``stream`` work; ``report`` holds the measurements."""

    def __init__(self, model, tokenizer, name: str, report: dict):
        super().__init__(model, tokenizer, name=name)
        self.report = report

    def save(self, path: str) -> str:
        """Write a folder that ``ownllm.load_model(path)`` (and transformers) load back quantized."""
        from ownllm.utils import atomic_dir, atomic_write

        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            atomic_write(os.path.join(tmp, "quantization.json"), json.dumps(self.report, indent=2, ensure_ascii=False))
        return path


class Quantizer:
    """``Quantizer(model="smollm2-135m", bits=4).quantize()`` → a ``QuantizedModel``.

    ``model``: alias, folder, .gguf, hub id, or a run directory (its adapter is merged first).
    """

    def __init__(self, model="smollm2-135m", bits: int = 4, device: str = "auto"):
        if bits not in (4, 8):
            raise ConfigError(f"bits must be 4 or 8 (got {bits!r})", hint="4: NF4 with double quantisation; 8: LLM.int8")
        self.model, self.bits, self.device = model, bits, device

    def _config(self):
        import torch
        from transformers import BitsAndBytesConfig

        require("bitsandbytes", "quantization", extra="quant")
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        explain_cpu_4bit_kernel()
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)

    def quantize(self) -> QuantizedModel:
        from ownllm.models.load import load_model, load_pretrained

        source = self.model if isinstance(self.model, str) else getattr(self.model, "name", "")
        original = self.model if isinstance(self.model, OwnModel) else load_model(source, device="cpu", merge=False)
        rows = sample_rows(source)
        before_size = original.model.get_memory_footprint()
        before_ppl = perplexity_on_rows(original.model, original.tokenizer, rows)
        with tempfile.TemporaryDirectory() as tmp:
            from ownllm.models.load import merge_adapter

            merged = merge_adapter(original.model, strict=True)[0]  # adapters are folded in; plain models come back as they are
            merged.save_pretrained(tmp)
            original.tokenizer.save_pretrained(tmp)
            del original, merged
            model, tokenizer, _ = load_pretrained(tmp, device=self.device, quantization_config=self._config())
        after_size = model.get_memory_footprint()
        after_ppl = perplexity_on_rows(model, tokenizer, rows)
        report = {"bits": self.bits, "method": "nf4+double-quant" if self.bits == 4 else "llm.int8",
                  "source": source, "size_mb_before": round(before_size / 2**20, 1),
                  "size_mb_after": round(after_size / 2**20, 1),
                  "size_change": round(after_size / before_size - 1, 4),
                  "perplexity_before": round(before_ppl, 4), "perplexity_after": round(after_ppl, 4),
                  "perplexity_change": round(after_ppl / before_ppl - 1, 4), "perplexity_rows": len(rows)}
        return QuantizedModel(model, tokenizer, name=f"{source}-q{self.bits}", report=report)
