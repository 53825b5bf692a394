"""``TrainConfig``: the train stage's settings. Its fields are ``ownllm train``'s flags (help from the
field), the studio's training request and ``config.yaml`` (``ownllm.config`` turns them into each).

``validate()`` collects every problem and raises once. Nothing heavy is imported here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from ownllm.config import setting as _f
from ownllm.errors import ConfigError

PREFERENCE_METHODS = ("dpo", "kto", "orpo")  # preference tuning of a LoRA adapter (training.preference)
METHODS = ("lora", "qlora", "full", "dora", "prefix", *PREFERENCE_METHODS)
PROTECTION_LEVELS = ("off", "default", "strong")


@dataclass
class TrainConfig:
    data: str | None = _f(None, "dataset file/folder, or a run directory prepared by `ownllm data prepare`")
    model: str = _f("smollm2-135m", "base model: alias, HF folder, .gguf file or hub id")
    out: str | None = _f(None, "run directory (default runs/<data name>)")
    method: str = _f("lora", "lora | qlora | full | dora | prefix; or preference tuning of a LoRA adapter from judged "
                             "answers: dpo | orpo (pairs), kto (good/bad labels or pairs)", choices=METHODS)
    epochs: float | None = _f(None, "epochs (default: chosen from the dataset size; early stopping decides)")
    max_steps: int | None = _f(None, "stop after this many optimizer steps (overrides --epochs)")
    lr: float | None = _f(None, "learning rate (default by method and dataset size: LoRA 2e-4..1e-3, full 3e-5)")
    batch_size: int | None = _f(None, "micro-batch per device (default 8, or 4 where 8 would leave a run under 100 "
                                      "optimizer steps; lowered automatically on out-of-memory)",
                         aliases=("--micro-batch",))
    grad_accum: int | None = _f(None, "gradient accumulation steps (default 4, fewer on small datasets)")
    max_seq_len: int = _f(1024, "longest sequence in tokens; longer rows are truncated")
    lora_r: int | None = _f(None, "LoRA rank (default 16, 64 on small datasets)")
    lora_alpha: int | None = _f(None, "LoRA alpha (default 2 x rank)")
    lora_dropout: float = _f(0.1, "dropout on LoRA layers (the guide's 0.1)")
    target_modules: str = _f("all-linear", "modules to adapt: all-linear or a comma list (q_proj,v_proj)")
    prefix_tokens: int = _f(20, "virtual tokens for prefix tuning")
    save_steps: int | None = _f(None, "checkpoint every N steps (default 100, or once per epoch when shorter)")
    eval_steps: int | None = _f(None, "validate every N steps (default: same as --save-steps)")
    save_total_limit: int = _f(3, "checkpoints to keep (the best one is always kept)")
    early_stopping_patience: int | None = _f(None, "stop after N validations without improvement (0 disables; default "
                                                   "3, off when validation has under 20 rows: see the data report)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup: float = _f(0.05, "warm-up: a fraction of the steps (< 1) or a number of steps")
    scheduler: str = _f("cosine", "learning-rate schedule: cosine | linear | constant_with_warmup")
    gradient_checkpointing: bool = _f(False, "recompute activations to save memory (slower)")
    precision: str = _f("auto", "auto | fp32 | fp16 | bf16 (auto: bf16/fp16 on GPUs, fp32 on CPUs without native bf16)")
    deepspeed: str | None = _f(None, "DeepSpeed JSON config (passed to transformers)")
    seed: int = _f(42, "random seed")
    init_adapter: str | None = _f(None, "start from an earlier adapter (folder or run dir): incremental learning")
    add_terms: str | None = _f(None, "text file of domain terms (one per line) to add to the vocabulary")
    system: str | None = _f(None, "system prompt baked into every training example")
    template: str | None = _f(None, "chat template: the model's own (default) or chatml, llama3, qwen, deepseek, alpaca")
    train_on_prompt: bool = _f(False, "also train on user/system tokens (default: assistant tokens only)")
    nan_policy: str = _f("stop", "on a NaN/inf loss: stop (keep the last good checkpoint) or skip the step")
    logging_steps: int = _f(5, "log train loss every N steps")
    device: str = _f("auto", "auto | cpu | cuda | mps")
    split: str = _f("0.8,0.1,0.1", "train,val,test fractions when --data is a raw file")
    time_budget: str | None = _f(None, "fit the run to a wall-clock budget (e.g. 3h, 45m): max steps from the plan, "
                                       "then a graceful stop with a checkpoint when the budget is spent")
    protect: str = _f("default", choices=PROTECTION_LEVELS, help="keep the base model's general ability (LoRA, DoRA, "
                                 "QLoRA, and DPO/KTO/ORPO stages): off | default | strong; replays general prompts "
                                 "with a KL term to the base model (see README)")
    hf_args: dict = _f(None, "extra transformers.TrainingArguments, or TRL's config for dpo/kto/orpo (dict; the "
                             "guide's args=)", cli=False)
    prepare: dict = _f(None, "how --data is prepared when it is a file: PrepareConfig's fields (config.yaml's prepare: "
                             "section; a trained run records the settings its data was prepared with)", cli=False)

    def validate(self) -> "TrainConfig":
        p = []
        if self.method not in METHODS:
            p.append(f"--method must be one of {', '.join(METHODS)} (got '{self.method}')")
        for name in ("max_seq_len", "logging_steps", "prefix_tokens", "save_total_limit"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                p.append(f"--{name.replace('_', '-')} must be an integer >= 1 (got {v!r})")
        for name in ("batch_size", "grad_accum", "max_steps", "lora_r", "lora_alpha", "save_steps", "eval_steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                p.append(f"--{name.replace('_', '-')} must be an integer >= 1 (got {v!r})")
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            p.append(f"--epochs must be > 0 (got {self.epochs!r})")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            p.append(f"--lr must be between 0 and 1 (got {self.lr!r})")
        if not 0 <= self.lora_dropout < 1:
            p.append(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        if not 0 <= self.weight_decay < 1:
            p.append(f"--weight-decay must be in [0, 1) (got {self.weight_decay})")
        if self.warmup < 0:
            p.append(f"--warmup must be >= 0 (got {self.warmup})")
        if self.early_stopping_patience is not None and (not isinstance(self.early_stopping_patience, int)
                                                         or self.early_stopping_patience < 0):
            p.append(f"--early-stopping-patience must be >= 0 (got {self.early_stopping_patience})")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            p.append(f"--precision must be auto, fp32, fp16 or bf16 (got '{self.precision}')")
        if self.scheduler not in ("cosine", "linear", "constant_with_warmup", "constant"):
            p.append(f"--scheduler must be cosine, linear, constant_with_warmup or constant (got '{self.scheduler}')")
        if self.protect not in PROTECTION_LEVELS:
            p.append(f"--protect must be one of {', '.join(PROTECTION_LEVELS)} (got '{self.protect}')")
        if self.nan_policy not in ("stop", "skip"):
            p.append(f"--nan-policy must be stop or skip (got '{self.nan_policy}')")
        for name in ("deepspeed", "add_terms"):
            v = getattr(self, name)
            if v and not os.path.isfile(v):
                p.append(f"--{name.replace('_', '-')}: file not found: {v}")
        if self.add_terms and os.path.isfile(self.add_terms):
            from ownllm.data.formats import read_text_file
            from ownllm.errors import DataError

            try:  # before any model loads: a terms file that does not decode fails now, not after loading
                read_text_file(self.add_terms, "--add-terms")
            except DataError as e:
                p.append(str(e).split("\n")[0])
        if self.init_adapter and not os.path.exists(self.init_adapter):
            p.append(f"--init-adapter: not found: {self.init_adapter}")
        if self.data is not None and not os.path.exists(self.data):
            p.append(f"--data: not found: {self.data}")
        if self.out is not None and os.path.isfile(self.out):
            p.append(f"--out {self.out} is a file: give a folder for the run (it will be created)")
        if self.prepare is not None:
            from ownllm.data.prepare import PrepareConfig

            known = {f.name for f in fields(PrepareConfig)}
            if not isinstance(self.prepare, dict):
                p.append("prepare: must be a mapping of `ownllm data prepare` settings")
            else:
                p += [f"prepare: unknown setting '{k}' (one of {', '.join(sorted(known))})"
                      for k in self.prepare if k not in known]
        if self.template:
            from ownllm.models.templates import TEMPLATES

            if self.template not in TEMPLATES:
                p.append(f"--template must be one of {', '.join(TEMPLATES)} (got '{self.template}')")
        if self.time_budget is not None:
            from ownllm.planning.plan import parse_duration

            try:
                if parse_duration(self.time_budget) <= 0:
                    p.append(f"--time-budget must be positive (got {self.time_budget})")
            except ConfigError as e:
                p += [f"--time-budget: {q}" + (f" ({e.hint})" if e.hint else "") for q in e.problems]
        if p:
            raise ConfigError(p)
        return self

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
