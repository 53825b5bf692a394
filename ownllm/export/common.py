"""What every export needs: a plain fp32 copy of the model to write, and prompts to check it with."""
from __future__ import annotations

import copy
import os

from ownllm.errors import ConfigError


def source_of(model) -> tuple[object, str]:
    """``(OwnModel, name)`` for an OwnModel, a run directory, an alias, a folder, a .gguf or a hub id."""
    from ownllm.models.generation import OwnModel
    from ownllm.models.load import load_model

    if isinstance(model, OwnModel):
        return model, model.name
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.fspath(model), device="cpu"), os.fspath(model)
    raise ConfigError(f"cannot export a {type(model).__name__}",
                      hint="pass a model from ownllm.load_model(), a run directory or a model name")


def plain_copy(own):
    """A float32 CPU copy of ``own.model`` with any LoRA/DoRA adapter folded in and bitsandbytes
    weights dequantized; the caller's model is left as it was."""
    import torch
    from peft import PeftModel

    from ownllm.training.methods import merge

    model = own.model
    if isinstance(model, PeftModel):
        model = merge(copy.deepcopy(model))  # merge_and_unload works in place
    elif getattr(model, "hf_quantizer", None) is not None and getattr(model, "is_quantized", False):
        model = copy.deepcopy(model)
        model.dequantize()
    else:
        model = copy.deepcopy(model)
    if getattr(model, "is_quantized", False):
        raise ConfigError(f"{own.name} is quantized in a way that cannot be exported",
                          hint="export the run or model it came from instead")
    return model.to(device="cpu", dtype=torch.float32).eval()


def probe_prompts(run_dir: str | None, tokenizer, n: int = 3) -> list[str]:
    """Up to ``n`` rendered prompts from the run's test/val/train data, else two fixed ones."""
    from ownllm.data.render import chat_template_for
    from ownllm.utils import read_jsonl

    rows = []
    for split in ("test", "val", "train"):
        path = os.path.join(run_dir or "", "data", f"{split}.jsonl")
        if run_dir and os.path.exists(path):
            rows += [r for r in read_jsonl(path) if "messages" in r][:n - len(rows)]
        if len(rows) >= n:
            break
    if not rows:
        rows = [{"messages": [{"role": "user", "content": "Hello, how are you?"}, {}]},
                {"messages": [{"role": "user", "content": "人工智能的未来是什么？"}, {}]}]
    tmpl = chat_template_for(tokenizer)
    return [tokenizer.apply_chat_template(r["messages"][:-1], chat_template=tmpl, tokenize=False,
                                          add_generation_prompt=True) for r in rows]


def run_dir_of(name: str) -> str | None:
    """``name`` when it is a run directory (it has data/ or config.yaml), else None."""
    if os.path.isdir(name) and (os.path.exists(os.path.join(name, "config.yaml"))
                                or os.path.isdir(os.path.join(name, "data"))):
        return name
    return None


GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)


def compare(reference, candidate, tokenizer, prompts: list[str]) -> tuple[float, bool]:
    """Largest logit difference over the prompts, and whether 16 greedy tokens match everywhere."""
    import torch

    worst, same = 0.0, True
    for text in prompts:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(reference.device) for k, v in enc.items()}
        with torch.inference_mode():
            a = reference(**enc).logits.float().cpu()
            b = candidate(**enc).logits.float().cpu()
            worst = max(worst, float((a - b).abs().max()))
            kw = dict(max_new_tokens=16, pad_token_id=tokenizer.pad_token_id, **GREEDY)
            same &= torch.equal(reference.generate(**enc, **kw).cpu(), candidate.generate(**enc, **kw).cpu())
    return worst, same
