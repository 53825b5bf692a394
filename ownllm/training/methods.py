"""Training methods, one shape: ``apply(model, cfg) -> model``, then save/load/merge.

LoRA, DoRA, QLoRA and prefix tuning come from peft; QLoRA's 4-bit NF4 weights from bitsandbytes
(which runs on CPUs too); full fine-tuning trains every weight.
"""
from __future__ import annotations

import json
import os

from ownllm.errors import ConfigError, HardwareError

ADAPTER_METHODS = ("lora", "qlora", "dora", "prefix")


def quantization_config(method: str, compute_dtype):
    """bitsandbytes 4-bit NF4 with double quantisation for QLoRA; None for other methods."""
    if method != "qlora":
        return None
    from ownllm.errors import explain_cpu_4bit_kernel, require

    require("bitsandbytes", "QLoRA (4-bit training)", extra="quant")
    explain_cpu_4bit_kernel()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def _targets(spec: str):
    return "all-linear" if spec == "all-linear" else [t.strip() for t in spec.split(",") if t.strip()]


def apply(model, cfg, trainable_tokens: list[int] | None = None):
    """Wrap ``model`` for ``cfg.method``. ``trainable_tokens``: new vocabulary rows to train (--add-terms)."""
    from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.init_adapter:
        return PeftModel.from_pretrained(model, adapter_folder(cfg.init_adapter), is_trainable=True)
    if cfg.method == "prefix":
        if cfg.gradient_checkpointing:
            raise ConfigError("prefix tuning does not work with --gradient-checkpointing")
        peft_cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.prefix_tokens)
    else:
        extra = {"trainable_token_indices": {"embed_tokens": trainable_tokens}} if trainable_tokens else {}
        peft_cfg = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                              lora_dropout=cfg.lora_dropout, target_modules=_targets(cfg.target_modules),
                              use_dora=cfg.method == "dora", **extra)
    try:
        wrapped = get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise ConfigError(f"--target-modules {cfg.target_modules!r} does not fit this model: {e}") from None
    if next(wrapped.parameters()).device.type == "cpu":
        use_fast_dropout(wrapped)
    return wrapped


def _fast_dropout_class():
    import torch

    class FastDropout(torch.nn.Dropout):
        """nn.Dropout with its mask made from 16-bit random integers, four per 64-bit draw of torch's CPU
        generator, where ``bernoulli_``/``rand_like`` make one slow draw per element (measured: 0.25 vs
        2.2 ms for a 480 x 576 mask; LoRA draws one mask per adapted layer per step, 13% of a step).
        The keep probability is 1 - p rounded to 1/65536 (0.9 -> 0.899994) and kept values are scaled by
        its exact inverse, so the expectation is unchanged; only the bool mask is saved for backward."""

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            threshold = max(1, round((1.0 - self.p) * 65536))
            n = x.numel()
            bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
            keep = bits.view(torch.int16)[:n].view(x.shape) < threshold - 32768
            return (x * (65536 / threshold)) * keep

    return FastDropout


def use_fast_dropout(model) -> int:
    """Swap peft's LoRA dropout layers for ``FastDropout`` (CPU training); returns how many."""
    import torch

    cls, swapped = _fast_dropout_class(), 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, layer in list(drops.items()):
                if type(layer) is torch.nn.Dropout and layer.p > 0:
                    drops[name] = cls(layer.p)
                    swapped += 1
    return swapped


def trainable_report(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": round(100 * trainable / max(total, 1), 4)}


def adapter_folder(path: str) -> str:
    """An adapter folder, given it or a run directory holding adapter/."""
    from ownllm.rundir import adapter_in

    found = adapter_in(path)
    if found:
        return found
    raise ConfigError(f"no adapter found at {path} (adapter_config.json)",
                      hint="point to a run directory of a LoRA/DoRA/QLoRA/prefix run, or to its adapter/ folder")


def save_trained(model, tokenizer, run, cfg) -> str:
    """Save the result into the ``RunDir`` ``run`` (or a folder): ``adapter/`` for adapter methods,
    ``model/`` for full fine-tuning."""
    from ownllm.rundir import RunDir
    from ownllm.utils import atomic_dir

    target = RunDir(run).model_dir if cfg.method == "full" else RunDir(run).adapter_dir
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "ownllm.json"), "w", encoding="utf-8") as f:
            json.dump({"base_model": cfg.model, "method": cfg.method}, f, ensure_ascii=False, indent=2)
    return target


def check_precision_for_method(method: str, device: str) -> None:
    if method == "qlora" and device == "mps":
        raise HardwareError("QLoRA (bitsandbytes 4-bit) does not run on Apple MPS", hint="use --method lora")
