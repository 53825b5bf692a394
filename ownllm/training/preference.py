"""Preference tuning — DPO, KTO, ORPO — of a LoRA adapter with TRL's trainers (issue 41).

``ownllm train --resume RUN --data RUN/feedback.jsonl --method kto`` continues a finished run as a new
stage (``training.continual``: the stage before moves into ``stages/N/``); ``ownllm train --data pairs.jsonl
--method dpo`` starts from the base model. The rows are the prepare stage's preference rows
(``data.preference``): DPO and ORPO learn from pairs (a chosen and a rejected answer), KTO from answers
labelled good or bad (a pair gives one of each).

The reference the DPO and KTO losses compare against is TRL's frozen copy of the adapter as the stage
starts (its "ref" adapter): the previous stage for a run, the base model for a fresh adapter (LoRA starts
at zero) — never a second copy of the model in memory. ORPO needs no reference. Forgetting protection
(``--protect``, ``training.protect``) applies as for a supervised run: the base model's answers to general
prompts are replayed, a few per step, and the KL divergence from the base model's distributions on them is
added to the preference loss with the level's weight (TRL batches pairs, so the replayed rows ride beside
the batch, not in it). ``--time-budget`` caps the steps by the planner's prediction (each example counted
at ``COST`` supervised rows) and stops at the budget.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter

from ownllm.errors import DataError

DEFAULTS = {"beta": 0.1, "batch_size": 4}  # TRL's beta
# Each method's learning rate, epochs and TRL loss, chosen on the dev half of benchmarks/preference.py (a sign-off
# taught to the support run by 40 feedback rows; RESULTS.md "Preference tuning") by the sum of the sign-off share
# and the domain contains-accuracy, ties to the general answers kept. Weaker settings taught little (DPO at 5e-5:
# 0% sign-off; ORPO at 2e-4: 20%), stronger ones cost domain facts (KTO at 5e-4: 87% sign-off, contains 83% → 33%;
# plain DPO at 5e-4: 50%). DPO adds TRL's "sft" loss on the chosen answer (RPO): without it the stage pushed the
# run's own right answers down and taught the new ending to 18% of answers.
METHOD_DEFAULTS = {"orpo": {"lr": 3e-4, "epochs": 5},
                   "dpo": {"lr": 5e-4, "epochs": 3, "trl": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}},
                   "kto": {"lr": 2e-4, "epochs": 3}}
# The method a stage takes when the person names none and the judgements make pairs (the best of the three by the
# rule above; answers labelled good or bad alone train KTO).
BEST = "orpo"
# Compute per row against a supervised row of the same length, for the planner: DPO and KTO run the policy
# forward and backward over two answers (chosen and rejected; KTO's answer and its mismatched KL answer) and
# the reference forward over both (a forward is about a third of forward + backward); ORPO has no reference.
COST = {"dpo": 2 * (1 + 1 / 3), "kto": 2 * (1 + 1 / 3), "orpo": 2.0}
NEEDS = {"dpo": "pairs (a chosen and a rejected answer to one prompt)", "orpo": "pairs (a chosen and a rejected "
         "answer to one prompt)", "kto": "answers labelled good or bad, or pairs"}


def _prompt_key(row: dict) -> str:
    return json.dumps(row["messages"][:-1], ensure_ascii=False, sort_keys=True)


def trl_rows(rows: list[dict], method: str) -> tuple[list[dict], dict]:
    """Canonical preference rows (``data.preference``) → TRL's conversational rows for ``method``, and an
    account of what was used and left out. DPO and ORPO also pair a good and a bad answer to the same
    prompt (and say how many pairs came from labels); KTO reads a pair as one good and one bad answer."""
    from ownllm.data.preference import kind

    kinds = Counter(kind(r) for r in rows)
    out: list[dict] = []
    paired = 0
    if method in ("dpo", "orpo"):
        for r in rows:
            if "rejected" in r:
                out.append({"prompt": r["messages"][:-1], "chosen": [r["messages"][-1]],
                            "rejected": [{"role": "assistant", "content": r["rejected"]}]})
        by_prompt: dict[str, dict[bool, list]] = {}
        for r in rows:
            if "label" in r and "rejected" not in r:
                by_prompt.setdefault(_prompt_key(r), {True: [], False: []})[r["label"]].append(r)
        for sides in by_prompt.values():
            for good, bad in zip(sides[True], sides[False]):
                out.append({"prompt": good["messages"][:-1], "chosen": [good["messages"][-1]],
                            "rejected": [bad["messages"][-1]]})
                paired += 1
    else:
        for r in rows:
            if "rejected" in r:
                out.append({"prompt": r["messages"][:-1], "completion": [r["messages"][-1]], "label": True})
                out.append({"prompt": r["messages"][:-1], "completion": [{"role": "assistant", "content": r["rejected"]}],
                            "label": False})
            elif "label" in r:
                out.append({"prompt": r["messages"][:-1], "completion": [r["messages"][-1]], "label": r["label"]})
    account = {"rows": len(rows), "pairs": kinds["pair"], "good": kinds["good"], "bad": kinds["bad"],
               "supervised_left_out": kinds["supervised"], "pairs_from_labels": paired, "examples": len(out)}
    return out, account


def default_method(rows: list[dict]) -> str:
    """The method for judged ``rows`` (canonical) when none is named: ``BEST`` when they make pairs, else KTO."""
    return BEST if trl_rows(rows, BEST)[0] else "kto"


def usable(data, method: str) -> tuple[list[dict], list[dict], dict]:
    """The training and validation rows ``method`` learns from, or a DataError that says how many rows were
    read, of which kind, and what the method needs."""
    train, account = trl_rows(data.train, method)
    val, _ = trl_rows(data.val, method)
    if not train:
        a = account
        hint = ("answers labelled good or bad train with --method kto" if method != "kto" and a["good"] + a["bad"]
                else "give a file of pairs (prompt, chosen, rejected), labels (prompt, completion, label) or "
                     "feedback (RUN/feedback.jsonl: /good, /bad, /better in `ownllm chat`)")
        raise DataError(f"--method {method} needs {NEEDS[method]}: of {a['rows']} training rows, {a['pairs']} are "
                        f"pairs, {a['good']} good and {a['bad']} bad answers (none of them to the same prompt), "
                        f"{a['supervised_left_out']} supervised rows with no judgement", hint=hint)
    if method == "kto" and len({e["label"] for e in train}) < 2:
        which = "good" if train[0]["label"] else "bad"
        raise DataError(f"--method kto needs answers of both kinds: all {len(train)} training answers are {which}",
                        hint="label some answers the other way (or write better answers: each becomes a pair)")
    return train, val, account


def resolve(cfg, n_train: int):
    """The settings left to us for a preference stage (the method's ``METHOD_DEFAULTS``, ``DEFAULTS``; a LoRA rank
    from the dataset's tier when the stage starts a fresh adapter)."""
    from ownllm.data.regime import RECIPES, recipe_tier

    r = cfg.lora_r or RECIPES[recipe_tier(n_train)]["lora_r"]
    chosen = METHOD_DEFAULTS[cfg.method]
    return dataclasses.replace(cfg, lr=cfg.lr or chosen["lr"], epochs=cfg.epochs or chosen["epochs"],
                               batch_size=cfg.batch_size or DEFAULTS["batch_size"], grad_accum=cfg.grad_accum or 1,
                               lora_r=r, lora_alpha=cfg.lora_alpha or 2 * r, early_stopping_patience=0)


def _trl_trainer(method: str):
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOConfig, ORPOTrainer


def preference_run(cfg, data, run, *, continual: dict | None = None):
    """The train stage for ``cfg.method`` in ``PREFERENCE_METHODS``: the adapter ``cfg.init_adapter`` (a
    finished run's, when continuing) or a fresh LoRA adapter on ``cfg.model``, tuned on ``data``'s preference
    rows into ``run`` (adapter/, train_summary.json, loss.png). Returns a ``TrainResult``."""
    import logging
    import warnings

    from datasets import Dataset
    from transformers import PrinterCallback

    from ownllm.rundir import RunDir
    from ownllm.training.methods import save_trained, trainable_report
    from ownllm.training.train import TrainResult, _log, fix_template, save_config, setup_model
    from ownllm.utils import atomic_write

    start = time.time()
    train, val, account = usable(data, cfg.method)
    save_config(cfg, run, getattr(data, "report", {}).get("settings"))
    adapter = dataclasses.replace(cfg, method=_adapter_kind(cfg.init_adapter))  # what the stage trains
    model, tokenizer, device, precision, _ = setup_model(None, adapter, data.train)
    template = fix_template(tokenizer, cfg.template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    protection, replay = _protection(model, tokenizer, cfg, adapter, data.train)
    budget = _budget(cfg, adapter, tokenizer, train, replay, start)
    Config, Trainer = _trl_trainer(cfg.method)
    Trainer = _protected(Trainer)
    args = Config(
        output_dir=RunDir(run.path).checkpoints_dir, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=float(cfg.epochs), max_steps=cfg.max_steps or -1, learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
        logging_steps=1, eval_strategy="no", save_strategy="no", max_length=cfg.max_seq_len,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu", seed=cfg.seed,
        data_seed=cfg.seed, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        **{"beta": DEFAULTS["beta"], **METHOD_DEFAULTS[cfg.method].get("trl", {}),
           **(cfg.hf_args or {})})  # hf_args may set TRL's own (beta, loss_type ...)
    _log(f"ownllm: {cfg.method} on {cfg.model} — {len(train)} training examples ({account['pairs']} pairs, "
         f"{account['good']} good, {account['bad']} bad answers"
         + (f", {account['pairs_from_labels']} pairs made of a good and a bad answer to one prompt"
            if account["pairs_from_labels"] else "") + f"); reference: {_reference(cfg)}; lr {cfg.lr:g}, "
         f"{cfg.epochs} epochs, batch {cfg.batch_size}; {device} {precision}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's notes on its own experimental status and tokenization
        logging.getLogger("trl").setLevel(logging.ERROR)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                          eval_dataset=Dataset.from_list(val) if val else None, processing_class=tokenizer,
                          callbacks=[budget["callback"]] if budget else None)
        trainer.replay = replay
        trainer.remove_callback(PrinterCallback)  # the summary and loss.png keep the logs; the console its lines
        trainer.train()
        if val:  # the held-out judgements, once, after training (the stage keeps its last step)
            trainer.evaluate()
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # the frozen reference copy is not part of the result
    out_dir = save_trained(model, tokenizer, run, adapter)
    history = trainer.state.log_history
    summary = _summary(cfg, args, run, out_dir, history, trainer.state, account, len(val), start, device, precision,
                       template, continual, trainable_report(model), protection, trainer.drift, budget)
    atomic_write(run.summary_json, json.dumps(summary, indent=2, ensure_ascii=False))
    from ownllm.training.callbacks import plot_losses

    plot_losses(history, run.loss_png)
    _log(f"ownllm: {cfg.method} finished after {trainer.state.global_step} steps in {summary['wall_seconds']:.0f}s; "
         f"preference accuracy on training batches {_fmt(summary['preference']['train_accuracy_first'])} → "
         f"{_fmt(summary['preference']['train_accuracy_last'])}")
    return TrainResult(summary, model, tokenizer)


def _protection(model, tokenizer, cfg, adapter, rows: list[dict]) -> tuple[dict, tuple | None]:
    """Forgetting protection for the stage: (what the summary says of it, and for the trainer the tokenized replay
    rows, the base model's distributions on them, how many ride beside each batch, the KL weight and the pad id;
    None when not applied). ``adapter``: the stage's settings with the adapter's method; ``rows``: the judged
    rows (their language steers the replay's, as for a supervised run)."""
    import math

    from ownllm.training.data import tokenize
    from ownllm.training.hf import supports_trained_positions_loss
    from ownllm.training.protect import LEVELS, base_distributions, protection_for, replay_rows
    from ownllm.training.train import _log

    protection = protection_for(adapter, len(rows))
    why = ("--protect off" if protection is None else
           "not under DeepSpeed, whose engine holds the weights" if cfg.deepspeed else
           None if supports_trained_positions_loss(model) else "this model's answer positions are not read apart")
    if why:
        return {"level": cfg.protect, "applied": False, "why": why}, None
    replay, _ = tokenize(replay_rows(model, tokenizer, cfg, rows, protection), tokenizer, cfg, "replay")
    replay = list(replay)
    targets = base_distributions(model, replay, tokenizer.pad_token_id)
    per_step = max(1, math.ceil(cfg.batch_size * protection.replay_ratio))
    small = protection is not LEVELS.get(cfg.protect)
    _log(f"ownllm: forgetting protection '{cfg.protect}'{' (strong on a small dataset)' if small else ''}: "
         f"{per_step} of {len(replay)} replayed general answers of the base model beside each batch, KL weight "
         f"{protection.kl_weight:g}")
    return ({"level": cfg.protect, "applied": True, "replay_rows": len(replay), "replay_per_step": per_step,
             "small_dataset": small, "kl_weight": protection.kl_weight, "replay_kind": "chat"},
            (replay, targets, per_step, protection.kl_weight, tokenizer.pad_token_id))


def _budget(cfg, adapter, tokenizer, examples: list[dict], replay: tuple | None, start: float) -> dict | None:
    """--time-budget for the stage: the planner's prediction with each example counted at ``COST`` supervised rows
    of its prompt and first answer (and the replayed rows as they are); caps ``cfg.max_steps`` to what fits and
    returns the callback that stops at the budget (``train.fit_to_budget``)."""
    if not cfg.time_budget:
        return None
    from ownllm.training.data import tokenize
    from ownllm.training.train import fit_to_budget

    chats = [{"messages": [*e["prompt"], *(e.get("chosen") or e["completion"])]} for e in examples]
    lengths, _ = tokenize(chats, tokenizer, cfg)
    scaled = [round(len(ids) * COST[cfg.method]) for ids in lengths["input_ids"]]
    replayed = [len(r["input_ids"]) for r in replay[0]] if replay else []
    planned = dataclasses.replace(adapter, max_steps=cfg.max_steps)
    budget = fit_to_budget(planned, scaled + replayed, len(replayed), start, {})
    cfg.max_steps = planned.max_steps
    return budget


def _protected(Trainer):
    """``Trainer`` (TRL's) with forgetting protection: in training, ``replay[2]`` replayed rows per step add
    ``kl_weight`` x their mean KL per answer token from the base model to the loss (``protect.replay_kl``, the
    adapter on). The drift of each step is kept for the summary."""
    from ownllm.training.protect import replay_kl

    class Protected(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.replay: tuple | None = None
            self.drift: list[float] = []
            self._next = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            if self.replay is None or not model.training:
                return out
            rows, targets, per_step, weight, pad_id = self.replay
            pick = [(self._next + i) % len(rows) for i in range(per_step)]
            self._next += per_step
            kl = replay_kl(self.accelerator.unwrap_model(model), [rows[i] for i in pick], [targets[i] for i in pick],
                           pad_id, per_step)
            self.drift.append(float(kl))
            if return_outputs:
                return out[0] + weight * kl, out[1]
            return out + weight * kl

    Protected.__name__ = Protected.__qualname__ = f"Protected{Trainer.__name__}"
    return Protected


def _adapter_kind(init_adapter: str | None) -> str:
    """The adapter a preference stage tunes: the earlier stage's kind (LoRA, DoRA, or QLoRA on a 4-bit base), or a
    fresh LoRA adapter."""
    import os

    from ownllm.errors import ConfigError
    from ownllm.rundir import read_json
    from ownllm.training.methods import adapter_folder

    if not init_adapter:
        return "lora"
    kind = (read_json(os.path.join(adapter_folder(init_adapter), "ownllm.json")) or {}).get("method", "lora")
    if kind == "prefix":
        raise ConfigError("preference tuning tunes a LoRA, DoRA or QLoRA adapter; this run is prefix tuning",
                          hint="train a LoRA run first (ownllm train --method lora), then its preference stage")
    return kind if kind in ("lora", "dora", "qlora") else "lora"


def _reference(cfg) -> str:
    if cfg.method == "orpo":
        return "none (ORPO needs none)"
    return "the adapter as this stage starts (the run's previous stage)" if cfg.init_adapter else \
        "the base model (a fresh adapter starts at zero)"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _summary(cfg, args, run, out_dir, history, state, account, n_val, start, device, precision, template, continual,
             params, protection: dict, drift: list[float], budget: dict | None) -> dict:
    """train_summary.json for a preference stage: the keys of a supervised run's that apply, and what the
    preference trainer logged (accuracy: the share of examples where the chosen answer gained more than the
    rejected one over the reference; margin: by how much, in beta-scaled log-probability)."""
    from ownllm.training.train import _peak_memory_mb

    def series(key):
        return [h[key] for h in history if key in h]

    acc = series("rewards/accuracies")
    margins = series("rewards/margins")
    losses = series("loss")
    wall = time.time() - start
    return {
        "run_dir": run.path, "method": cfg.method, "model": cfg.model, "output": out_dir,
        "train_rows": account["rows"], "val_rows": n_val, **params, "global_step": state.global_step,
        "epochs": round(state.epoch or 0, 3), "wall_seconds": round(wall, 1), "tokens_per_second": None, "peak_memory_mb": _peak_memory_mb(device),
        "final_train_loss": losses[-1] if losses else None, "best_val_loss": (series("eval_loss") or [None])[-1],
        "stopped_because": "time_budget" if budget and budget["callback"].hit else
        "max_steps" if cfg.max_steps else "epochs_completed", "precision": precision,
        "device": device, "template": template, "continual": continual, "regime": None, "protection": protection,
        "general_drift": round(sum(drift[-8:]) / len(drift[-8:]), 5) if drift else None,
        "time_budget": None if not budget else {"budget_hours": budget["budget_hours"],
                                                "predicted_hours": budget["predicted_hours"],
                                                "actual_hours": round(wall / 3600, 6)},
        "preference": {"method": cfg.method, "beta": args.beta, "loss_type": getattr(args, "loss_type", None),
                       "reference": _reference(cfg), **account,
                       "train_accuracy_first": acc[0] if acc else None, "train_accuracy_last": acc[-1] if acc else None,
                       "train_margin_first": margins[0] if margins else None,
                       "train_margin_last": margins[-1] if margins else None,
                       "eval_accuracy": (series("eval_rewards/accuracies") or [None])[-1],
                       "eval_margin": (series("eval_rewards/margins") or [None])[-1]},
        "settings": {k: getattr(cfg, k) for k in ("lr", "lora_r", "lora_alpha", "batch_size", "grad_accum", "epochs",
                                                   "max_steps")},
    }
