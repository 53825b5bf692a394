"""`ownllm export RUN --format merged|adapter`: fold the adapter in (or copy it), reload the result
with plain transformers/peft, and compare its logits and greedy text with the trained model's."""
from __future__ import annotations

import os

from ownllm.errors import ConfigError, OwnLLMError
from ownllm.export.manifest import check, write_manifest
from ownllm.utils import atomic_dir

LOGIT_TOLERANCE = 1e-3


def _probe_prompts(run_dir: str, tokenizer, n: int = 3) -> list[str]:
    from ownllm.data.render import chat_template_for
    from ownllm.utils import read_jsonl

    rows = []
    for split in ("test", "val", "train"):
        path = os.path.join(run_dir, "data", f"{split}.jsonl")
        if os.path.exists(path):
            rows += [r for r in read_jsonl(path) if "messages" in r][:n - len(rows)]
        if len(rows) >= n:
            break
    if not rows:
        return ["Hello, how are you?", "人工智能的未来是"]
    tmpl = chat_template_for(tokenizer)
    return [tokenizer.apply_chat_template(r["messages"][:-1], chat_template=tmpl, tokenize=False,
                                          add_generation_prompt=True) for r in rows]


def _compare(reference, candidate, tokenizer, prompts: list[str]) -> tuple[float, bool]:
    """Largest logit difference over the prompts, and whether 16 greedy tokens match everywhere."""
    import torch

    worst, same = 0.0, True
    for text in prompts:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            a = reference(**enc).logits.float()
            b = candidate(**enc).logits.float()
            worst = max(worst, float((a - b).abs().max()))
            kw = dict(max_new_tokens=16, do_sample=False, temperature=None, top_p=None, top_k=None,
                      pad_token_id=tokenizer.pad_token_id)
            same &= torch.equal(reference.generate(**enc, **kw), candidate.generate(**enc, **kw))
    return worst, same


def export(run_dir: str, fmt: str = "merged", out: str | None = None, overwrite: bool = False) -> dict:
    """Export ``run_dir`` as ``merged`` safetensors or a standalone ``adapter``; returns the manifest."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ownllm.models.load import load_model
    from ownllm.training.methods import merge

    if fmt not in ("merged", "adapter"):
        raise ConfigError(f"unknown export format '{fmt}'", hint="merged or adapter")
    if not os.path.isdir(run_dir):
        raise OwnLLMError(f"run directory not found: {run_dir}")
    out = out or os.path.join(run_dir, "export", fmt)
    if os.path.exists(out) and not overwrite:
        raise ConfigError(f"{out} already exists", hint="pass --overwrite, or --out another folder")
    trained = load_model(run_dir, device="cpu")
    is_adapter = isinstance(trained.model, PeftModel)
    if fmt == "adapter" and not is_adapter:
        raise ConfigError(f"{run_dir} is a full fine-tune: there is no adapter to export", hint="use --format merged")
    prompts = _probe_prompts(run_dir, trained.tokenizer)
    with atomic_dir(out) as tmp:
        if fmt == "merged":
            # merge_and_unload changes the model in place, so the reference logits come from a fresh load
            reference = load_model(run_dir, device="cpu").model
            merge(trained.model).save_pretrained(tmp)
            trained.tokenizer.save_pretrained(tmp)
            reloaded = AutoModelForCausalLM.from_pretrained(tmp)
        else:
            reference = trained.model
            trained.model.save_pretrained(tmp)
            trained.tokenizer.save_pretrained(tmp)
            base = load_model(run_dir, device="cpu").model.get_base_model()
            reloaded = PeftModel.from_pretrained(base, tmp)
        reloaded.eval()
        diff, same = _compare(reference, reloaded, trained.tokenizer, prompts)
        checks = [check("max |logit difference| vs the trained model", round(diff, 6), LOGIT_TOLERANCE),
                  check("greedy 16-token continuations identical", float(same), 1.0, passed=same)]
        manifest = write_manifest(tmp, fmt, run_dir, checks, {"probe_prompts": len(prompts)})
        if not manifest["all_checks_passed"]:
            raise OwnLLMError(f"the {fmt} export failed its checks: {checks}", hint="nothing was written at " + out)
    manifest["path"] = out
    return manifest
