"""The train stage: setup → train → cleanup, around transformers.Trainer (``train_run``)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass

from ownllm.errors import ConfigError, DataError, HardwareError, OwnLLMError
from ownllm.rundir import RunDir
from ownllm.utils import atomic_write


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def setup_model(loaded, cfg, rows: list):
    """Load the base model and tokenizer (or use ``loaded``, an ``OwnModel``) and apply the training method.
    Returns the model, tokenizer, device, precision and --add-terms' report (None without it)."""
    import torch

    from ownllm.models.load import load_pretrained
    from ownllm.device import resolve_device, resolve_precision, torch_dtype
    from ownllm.training import methods

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    methods.check_precision_for_method(cfg.method, device)
    if loaded is not None:
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        # Frozen base weights of adapter methods sit in the run's half precision (peft keeps the
        # adapters in fp32, autocast does the mixed matmuls): half the weight memory, and no fp32 -> bf16
        # copy of every weight in every forward. Full fine-tuning keeps fp32 master weights; QLoRA
        # stores the frozen linears in 4-bit.
        half_base = device != "mps" and cfg.method in ("lora", "dora", "prefix") and precision != "fp32"
        qcfg = methods.quantization_config(cfg.method, torch_dtype(precision) if precision != "fp32" else torch.float32)
        model, tokenizer, _ = load_pretrained(cfg.model, device=device, dtype=precision if half_base else "fp32",
                                              quantization_config=qcfg)
    new_ids, term_stats = None, None
    if cfg.add_terms:
        new_ids, term_stats = add_terms(model, tokenizer, cfg, rows)
    model = methods.apply(model, cfg, trainable_tokens=new_ids)
    return model, tokenizer, device, precision, term_stats


def add_terms(model, tokenizer, cfg, rows: list) -> tuple[list[int], dict]:
    """--add-terms: domain terms the tokenizer splits become single tokens; their embedding rows train.

    Returns the new token ids and a report: terms read, tokens added, training tokens before/after.
    """
    from ownllm.data.report import token_lengths
    from ownllm.errors import ConfigError

    if cfg.method == "prefix":
        raise ConfigError("--add-terms needs a method that can train embeddings (lora, dora, qlora or full)")
    from ownllm.data.formats import read_text_file

    lines = read_text_file(cfg.add_terms, "--add-terms").splitlines()
    terms = list(dict.fromkeys(t.strip() for t in lines if t.strip() and not t.startswith("#")))
    before = sum(token_lengths(rows, tokenizer, cfg.template))
    new = [t for t in terms if len(tokenizer(t, add_special_tokens=False)["input_ids"]) > 1]
    added = tokenizer.add_tokens(new)
    if added:
        # New rows start at the mean of the old ones (transformers' mean_resizing), then train.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    after = sum(token_lengths(rows, tokenizer, cfg.template))
    stats = {"terms": len(terms), "new_tokens": added, "train_tokens_before": before, "train_tokens_after": after,
             "shorter_by": round(1 - after / before, 4) if before else 0.0}
    _log(f"ownllm: --add-terms: {len(terms)} terms, {added} new tokens; training data "
         f"{stats['shorter_by']:.1%} shorter ({before:,} → {after:,} tokens)")
    return (tokenizer.convert_tokens_to_ids(new) if added else []), stats


EAGER_ATTENTION_MAX_TOKENS = 128


def choose_attention(model, device: str, lengths: list[int]) -> str:
    """The attention kernel for this run; returns its name. On a CPU, rows of at most
    ``EAGER_ATTENTION_MAX_TOKENS`` tokens train faster with transformers' plain (eager) attention than with
    sdpa, whose CPU flash kernel's backward dominates at short lengths (measured on the embedded model,
    bf16 LoRA: 8 x 60 tokens 1.48 vs 1.65 s/step; equal at 256 and 512; eager 36% slower at 1024 and its
    T x T scores cost memory). Elsewhere the model keeps what it was loaded with."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = getattr(base.config, "_attn_implementation", None) or "eager"
    if device == "cpu" and current == "sdpa" and lengths and max(lengths) <= EAGER_ATTENTION_MAX_TOKENS:
        base.set_attn_implementation("eager")
        return "eager"
    return current


def training_arguments(cfg, run_dir: str, n_train: int, has_val: bool, device: str, precision: str,
                       lengths: list[int] | None = None, best_metric: str = "eval_loss", val_rows: int | None = None):
    """``best_metric``: what early stopping and the best checkpoint follow (lower is better). The run ends on
    its best checkpoint where validation has rows enough to trust (``data.regime.TRUSTED_VAL_ROWS``) or early
    stopping was asked for; on fewer rows, on its last step."""
    from transformers import TrainingArguments

    from ownllm.data.regime import TRUSTED_VAL_ROWS

    from ownllm.planning.estimate import sampling_strategy, steps_per_epoch
    from ownllm.training.distributed import world_size

    per_epoch = steps_per_epoch(n_train, cfg.batch_size, cfg.grad_accum, world_size())
    save_steps = cfg.save_steps or min(100, per_epoch)
    eval_steps = cfg.eval_steps or save_steps
    select_best = has_val and (val_rows is None or val_rows >= TRUSTED_VAL_ROWS or bool(cfg.early_stopping_patience))
    if select_best and save_steps % eval_steps:
        save_steps = eval_steps * max(1, round(save_steps / eval_steps))  # best-model tracking needs this
    kwargs = dict(
        output_dir=RunDir(run_dir).checkpoints_dir, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=float(cfg.epochs), max_steps=cfg.max_steps or -1, learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup, weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if has_val else "no", eval_steps=eval_steps if has_val else None,
        save_strategy="steps", save_steps=save_steps, save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=select_best, metric_for_best_model=best_metric if has_val else None,
        greater_is_better=False if has_val else None,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        seed=cfg.seed, data_seed=cfg.seed, report_to="none", disable_tqdm=True,
        train_sampling_strategy=sampling_strategy(lengths or [], cfg.batch_size), remove_unused_columns=False,
        deepspeed=cfg.deepspeed, dataloader_num_workers=0, save_only_model=False,
    )
    kwargs.update(cfg.hf_args or {})
    return TrainingArguments(**kwargs)


def build_hf_trainer(cfg, run_dir, model, tokenizer, train_ds, val_ds, device, precision, lengths, extra_callbacks=(),
                     kl_weight: float = 0.0, replay_targets: list | None = None):
    """The transformers Trainer for this run; ``lengths``: the training rows' token counts; ``kl_weight``:
    forgetting protection's weight on replay rows (0: none), ``replay_targets`` the base model's
    distributions on them (``protect.base_distributions``)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import EarlyStoppingCallback
    from transformers.integrations import TensorBoardCallback

    from ownllm.training.callbacks import MetricsCallback, ProgressCallback, SignalCallback, StatusFileCallback
    from ownllm.training.data import pad_collator
    from ownllm.training.hf import HFTrainer, supports_trained_positions_loss, trained_positions_loss

    has_val = val_ds is not None and len(val_ds) > 0
    drift = drift_rows(cfg, train_ds, replay_targets, tokenizer.pad_token_id, kl_weight) if has_val else None
    args = training_arguments(cfg, run_dir, len(train_ds), has_val, device, precision, lengths,
                              "eval_protected_loss" if drift else "eval_loss", len(val_ds) if has_val else 0)
    run = RunDir(run_dir)
    signals, metrics = SignalCallback(), MetricsCallback(run.metrics_jsonl)
    callbacks = [signals, metrics, ProgressCallback(), StatusFileCallback(run.status_json, device),
                 TensorBoardCallback(tb_writer=SummaryWriter(run.tensorboard_dir))]
    if has_val and cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    callbacks += list(extra_callbacks)
    hf = HFTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds if has_val else None,
                   data_collator=pad_collator(tokenizer.pad_token_id, replay_targets), processing_class=tokenizer,
                   callbacks=callbacks, nan_policy=cfg.nan_policy, drift=drift,
                   compute_loss_func=trained_positions_loss(model, kl_weight) if supports_trained_positions_loss(model) else None)
    from transformers.trainer_callback import PrinterCallback

    hf.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its prints
    hf.own_signals, hf.own_metrics = signals, metrics
    return hf


def drift_rows(cfg, train_ds, replay_targets: list | None, pad_id: int, kl_weight: float) -> tuple | None:
    """What validation scores for drift from the base model (``HFTrainer.evaluation_loop``): the first
    ``protect.DRIFT_ROWS`` replayed rows (they come last in ``train_ds``, numbered from 1; ``replay_rows``
    orders them so that these few are in the replay's language mix) with their base
    distributions. None without protection, and under DeepSpeed, whose engine holds the weights."""
    from ownllm.training.protect import DRIFT_ROWS

    if not kl_weight or not replay_targets or cfg.deepspeed:
        return None
    first = len(train_ds) - len(replay_targets)
    rows = train_ds.select(range(first, first + min(DRIFT_ROWS, len(replay_targets))))
    assert rows[0]["replay"] == 1, "replay rows come last in the training rows"
    return list(rows), replay_targets[:len(rows)], pad_id, kl_weight


@dataclass
class TrainResult:
    """What the train stage returns: the summary (also ``train_summary.json``) and the trained model, in memory."""
    summary: dict
    model: object
    tokenizer: object


def _supervised(data, facts: dict) -> tuple[list, list]:
    """The training and validation rows supervised training learns: answers labelled bad (preference data,
    ``data.preference``) are left out and counted in the summary's ``bad_answers_left_out``."""
    from ownllm.data.preference import supervised

    train, val = supervised(data.train), supervised(data.val)
    left = len(data.train) + len(data.val) - len(train) - len(val)
    if left:
        facts["bad_answers_left_out"] = left
        _log(f"ownllm: {left} answers labelled bad are left out: supervised training learns only good answers")
    if not train:
        raise DataError(f"all {len(data.train)} training rows are answers labelled bad: supervised training has "
                        "nothing to learn from them", hint="add good answers, or better answers written for them")
    return train, val


def train_run(cfg, data, run, *, model=None, resume: str | None = None, additional_epochs: float | None = None,
              continual: dict | None = None, callbacks: tuple | list = ()) -> TrainResult:
    """The train stage: fine-tune on ``data`` (prepared: ``.train``/``.val`` rows) with the settings ``cfg``
    (a ``TrainConfig`` whose defaults the plan stage resolved), into the run directory ``run``: config.yaml,
    checkpoints, the adapter or model, metrics, loss.png and train_summary.json. ``model``: an ``OwnModel``
    to train instead of loading ``cfg.model``; ``resume``: a checkpoint to go on from; ``additional_epochs``:
    that many epochs of steps past it; ``continual``: what ``continual.start_stage`` recorded; ``callbacks``: more
    transformers callbacks (the tune stage's pruning). Out of memory,
    it halves the micro-batch and carries on. ``cfg`` is not changed: what changes on the way is in the
    summary's ``adjusted``."""
    from ownllm.training import distributed
    from ownllm.training.data import tokenize
    from ownllm.training.config import PREFERENCE_METHODS

    if cfg.method in PREFERENCE_METHODS:  # their stage is training.preference.preference_run (Trainer.train calls it)
        raise ConfigError(f"--method {cfg.method} is preference tuning, not this supervised stage")
    # config.yaml keeps what was asked (it reproduces the run); what changes on the way (out-of-memory
    # back-off, --additional-epochs, --time-budget, a resumed checkpoint's batch) changes this working
    # copy only and is recorded in train_summary.json's "adjusted".
    asked, cfg = cfg, dataclasses.replace(cfg)
    from ownllm.data.regime import size_regime

    facts = {"adjusted": {}, "continual": continual,
             "regime": size_regime(len(data.train), len(data.val), len(getattr(data, "test", None) or []))}
    if facts["regime"]["name"] == "tiny":
        _log(f"ownllm: WARNING: {facts['regime']['why']}; the model trains on every row")
    os.makedirs(run.path, exist_ok=True)
    save_config(asked, run, getattr(data, "report", {}).get("settings"))
    with distributed.main_first():  # the main process converts/caches the model first
        model, tokenizer, device, precision, facts["added_terms"] = setup_model(model, cfg, data.train)
    facts["template"] = fix_template(tokenizer, cfg.template)
    learned, val_rows = _supervised(data, facts)
    train_ds, dropped = tokenize(learned, tokenizer, cfg)
    val_ds, _ = tokenize(val_rows, tokenizer, cfg, "validation") if val_rows else (None, 0)
    with distributed.main_first():  # the main process generates (and caches) the replay answers first
        train_ds, facts["protection"], replay_targets = add_replay(model, tokenizer, cfg, train_ds, learned,
                                                                   facts["template"]["base_model"])
    if additional_epochs is not None and resume is None:
        raise ConfigError("additional epochs go on from a checkpoint: none was given")
    state = _trainer_state(resume) if resume else {}
    if resume:
        _follow_checkpoint_batch(cfg, state, facts["adjusted"])
    if additional_epochs is not None:  # exactly that many epochs of optimizer steps past the checkpoint
        _add_epochs(cfg, (int(state.get("global_step") or 0), float(additional_epochs)), len(train_ds),
                    facts["adjusted"])
    lengths = [len(x) for x in train_ds["input_ids"]]  # read once: sampling, attention and the budget use them
    facts["attention"] = choose_attention(model, device, lengths)
    from ownllm.training.methods import trainable_report

    params = trainable_report(model)
    _log(f"ownllm: {cfg.method} on {cfg.model} — {params['trainable_params']:,} trainable of "
         f"{params['total_params']:,} parameters ({params['trainable_percent']}%); {len(train_ds)} train / "
         f"{len(val_ds) if val_ds else 0} val rows; lr {cfg.lr:g}, batch {cfg.batch_size} x {cfg.grad_accum}, "
         f"{cfg.epochs:g} epochs{f' (max {cfg.max_steps} steps)' if cfg.max_steps else ''}; {device} {precision}, "
         f"{facts['attention']} attention")
    start = time.time()
    budget = facts["budget"] = fit_to_budget(cfg, lengths, facts["protection"].get("replay_rows", 0), start,
                                             facts["adjusted"]) if cfg.time_budget else None
    hf = _train_with_backoff(cfg, run, model, tokenizer, (train_ds, val_ds, lengths), (device, precision),
                             [*callbacks, *([budget["callback"]] if budget else [])], facts, replay_targets, resume)
    summary = _finish(run, cfg, hf, tokenizer, data, params, dropped, start, precision, device, facts)
    return TrainResult(summary, hf.model, tokenizer)


def fix_template(tokenizer, asked: str | None) -> dict:
    """Put the chat template this run trains with into ``tokenizer`` (saved with the adapter or model, so
    that chat, serve, the report card and every export render prompts as training did) and say which it is
    and why: asked for (--template), the model's own, or chosen for a base model that has none."""
    from ownllm.models.templates import TEMPLATE_ARGS, chat_template_for, template_name_for

    chosen = None if asked else template_name_for(tokenizer)
    args = {"arguments": dict(TEMPLATE_ARGS),  # Qwen3's thinking: off, with the empty block its template writes
            "base_model": not getattr(tokenizer, "chat_template", None)}  # a pre-trained model: none of its own
    tokenizer.chat_template = chat_template_for(tokenizer, asked) or tokenizer.chat_template
    if asked:
        return {"name": asked, "how": "asked for (--template)", **args}
    if chosen:
        return {"name": chosen, "how": "chosen for a model without one: its vocabulary holds this template's "
                                       "markers" if chosen != "alpaca" else "chosen for a model without one: "
                                       "Alpaca's turns end on the end-of-sequence token", **args}
    return {"name": "the model's own", "how": "the tokenizer's chat template", **args}


def _train_with_backoff(cfg, run, model, tokenizer, datasets, where, callbacks, facts, replay_targets, resume):
    """transformers' training loop; out of memory, the micro-batch halves (accumulation doubles, the same
    effective batch) and training goes on from the last checkpoint. Changes ``cfg`` (the stage's working
    copy) and records why in ``facts["adjusted"]``. Returns the transformers Trainer it finished with."""
    import torch

    from ownllm.training.hf import NonFiniteLoss, last_checkpoint

    train_ds, val_ds, lengths = datasets
    device, precision = where
    while True:
        hf = build_hf_trainer(cfg, run.path, model, tokenizer, train_ds, val_ds, device, precision, lengths,
                              callbacks, facts["protection"].get("kl_weight", 0.0), replay_targets)
        hf.own_signals.install()
        try:
            hf.train(resume_from_checkpoint=resume)
            break
        except torch.OutOfMemoryError:
            if cfg.batch_size == 1:
                raise HardwareError("out of memory even with a micro-batch of 1",
                                    hint="use --method qlora, --gradient-checkpointing, a shorter --max-seq-len "
                                         "or a smaller model (see `ownllm plan`)") from None
            cfg.batch_size, cfg.grad_accum = cfg.batch_size // 2, cfg.grad_accum * 2
            _adjust(facts["adjusted"], "out of memory: micro-batch halved, accumulation doubled",
                    batch_size=cfg.batch_size, grad_accum=cfg.grad_accum)
            _log(f"out of memory: micro-batch halved to {cfg.batch_size}, accumulation raised to "
                 f"{cfg.grad_accum} (same effective batch); carrying on")
            resume = last_checkpoint(run.checkpoints_dir)
            _free_accelerator_memory()
        except NonFiniteLoss as e:
            good = last_checkpoint(run.checkpoints_dir)
            raise OwnLLMError(f"{e}; training stopped" + (f". The last good checkpoint is {good}" if good else ""),
                              hint="lower --lr, check the data for broken rows, or use --nan-policy skip") from None
        finally:
            hf.own_signals.uninstall()
    return hf


def save_config(cfg, run, prepared_with: dict | None = None) -> None:
    """config.yaml: what was asked, so ``ownllm train runs/NAME/config.yaml`` runs it again (main process only).
    Its ``prepare:`` section is how the run's data was prepared (``prepared_with``: the data report's
    settings), less what training sets itself (model, system prompt, template, length, seed, split)."""
    from ownllm.config import save_yaml
    from ownllm.training import distributed

    if not distributed.is_main():
        return
    if prepared_with:
        own = ("model", "system", "template", "max_seq_len", "seed", "split")
        section = {k: v for k, v in prepared_with.items() if k not in own and v is not None}
        cfg = dataclasses.replace(cfg, prepare=section or None)
    save_yaml(cfg, run.config_yaml, f"# Reproduce this run: ownllm train {run.config_yaml}\n")


def _trainer_state(checkpoint: str) -> dict:
    """A checkpoint's trainer_state.json (transformers' own: its step, its micro-batch)."""
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)


def _adjust(adjusted: dict, why: str, **settings) -> None:
    """Record settings this run changed from what config.yaml asks, and why (train_summary.json)."""
    adjusted.update(settings)
    adjusted.setdefault("why", [])
    if why not in adjusted["why"]:
        adjusted["why"].append(why)


def _add_epochs(cfg, extra: tuple[int, float], n_train: int, adjusted: dict) -> None:
    """--additional-epochs: that many epochs of optimizer steps past the checkpoint's step."""
    from ownllm.planning.estimate import steps_per_epoch
    from ownllm.training.distributed import world_size

    step, epochs = extra
    per_epoch = steps_per_epoch(n_train, cfg.batch_size, cfg.grad_accum, world_size())
    cfg.max_steps = step + max(1, round(epochs * per_epoch))
    cfg.epochs = math.ceil(cfg.max_steps / per_epoch)
    _adjust(adjusted, f"--additional-epochs {epochs:g} from step {step}", max_steps=cfg.max_steps, epochs=cfg.epochs)


def _follow_checkpoint_batch(cfg, state: dict, adjusted: dict) -> None:
    """A checkpoint saved after an out-of-memory back-off has a smaller micro-batch than config.yaml asks:
    resume with the checkpoint's (same effective batch), so the data position it skips to is right.
    ``state``: the checkpoint's trainer_state.json."""
    saved = state.get("train_batch_size")
    if saved and saved != cfg.batch_size and (cfg.batch_size * cfg.grad_accum) % saved == 0:
        cfg.grad_accum = cfg.batch_size * cfg.grad_accum // saved
        cfg.batch_size = saved
        _adjust(adjusted, "resumed with the checkpoint's micro-batch", batch_size=saved, grad_accum=cfg.grad_accum)


def add_replay(model, tokenizer, cfg, train_ds, domain_rows: list[dict], base_model: bool = False):
    """Forgetting protection: the replay rows appended to the training rows (a ``replay`` column numbers
    them from 1; 0 is a domain row), what the summary records, and the base model's distributions on the
    replay rows (``protect.base_distributions``, in that numbering; None without protection). Validation
    stays the domain's own rows. ``base_model`` (no chat template of its own): the replay is its own plain
    text, not chat answers it was never taught to give."""
    from datasets import concatenate_datasets

    from ownllm.training.data import tokenize
    from ownllm.training.hf import supports_trained_positions_loss
    from ownllm.training.protect import LEVELS, base_distributions, protection_for, replay_rows

    protection = protection_for(cfg, len(domain_rows))
    if protection is None or not supports_trained_positions_loss(model):
        if cfg.protect != "off":
            _log(f"ownllm: forgetting protection is not applied to {cfg.method} on this model "
                 "(it needs LoRA, DoRA or QLoRA on a model whose logits are its output layer's: Llama, Mistral, "
                 "Qwen, Gemma 3, Phi-3/4, SmolLM3)")
        return train_ds, {"level": cfg.protect, "applied": False}, None
    replay, _ = tokenize(replay_rows(model, tokenizer, cfg, domain_rows, protection, base_model), tokenizer, cfg)
    targets = base_distributions(model, replay, tokenizer.pad_token_id)
    mixed = concatenate_datasets([train_ds.add_column("replay", [0] * len(train_ds)),
                                  replay.add_column("replay", list(range(1, len(replay) + 1)))])
    kind = "texts (a base model: its own plain text)" if base_model else "answers"
    small = protection is not LEVELS.get(cfg.protect)  # the default level on a small dataset: strong's settings
    _log(f"ownllm: forgetting protection '{cfg.protect}'{' (strong on a small dataset)' if small else ''}: {len(replay)} "
         f"replayed general {kind} of the base model beside {len(train_ds)} training rows, KL weight {protection.kl_weight:g}")
    return mixed, {"level": cfg.protect, "applied": True, "replay_rows": len(replay), "small_dataset": small,
                   "kl_weight": protection.kl_weight, "replay_kind": "plain text" if base_model else "chat"}, targets


def fit_to_budget(cfg, lengths: list[int], replay: int, start: float, adjusted: dict) -> dict:
    """--time-budget: predict the run's time with the planner; cap max steps to what fits; stop at the budget.
    ``lengths``: every training row's tokens, the ``replay`` replayed rows among them."""
    from ownllm.planning.profiles import this_machine
    from ownllm.planning.plan import parse_duration, plan, spec_for
    from ownllm.training.callbacks import TimeBudgetCallback
    from ownllm.training.protect import DRIFT_ROWS

    hours = parse_duration(cfg.time_budget)
    domain, replayed = lengths[:len(lengths) - replay], lengths[len(lengths) - replay:]  # replay rows come last
    p = plan(spec_for(cfg.model), this_machine(), examples=len(domain), replay_rows=replay,
             tokens_per_example=sum(domain) / max(1, len(domain)), lengths=domain,
             replay_tokens_per_example=sum(replayed) / replay if replay else 0.0,
             epochs=float(cfg.epochs), method=cfg.method, budget_hours=hours, micro_batch=cfg.batch_size,
             grad_accum=cfg.grad_accum, lora_r=cfg.lora_r or 16, gradient_checkpointing=cfg.gradient_checkpointing,
             drift_rows=DRIFT_ROWS)
    rec, predicted = p["recommendation"], p["hours"]
    if rec.get("max_steps") and (cfg.max_steps is None or rec["max_steps"] < cfg.max_steps):
        cfg.max_steps = rec["max_steps"]
        predicted = rec["hours"]
        _adjust(adjusted, f"--time-budget {cfg.time_budget}", max_steps=cfg.max_steps)
        _log(f"ownllm: --time-budget {cfg.time_budget}: {cfg.epochs:g} epochs would take ~{p['hours']:.2f} h; "
             f"training {cfg.max_steps} steps (~{rec['epochs']:g} epochs) instead")
    else:
        _log(f"ownllm: --time-budget {cfg.time_budget}: predicted {predicted:.2f} h, within the budget")
    # keep ~3% for the final evaluation and save after the stop
    return {"budget_hours": hours, "predicted_hours": round(predicted, 6),
            "callback": TimeBudgetCallback(hours * 3600 * 0.97, start)}


def _at_step(history: list[dict], step: int | None, key: str, default: float | None = None) -> float | None:
    """The logged ``key`` of the evaluation at ``step`` (the best checkpoint's), else ``default``."""
    return next((h[key] for h in reversed(history) if key in h and h.get("step") == step), default)


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _finish(run, cfg, hf, tokenizer, data, params, dropped, start, precision, device, facts: dict) -> dict:
    """Save the result, the summary and the plot. ``cfg``: the settings this run trained with (config.yaml's,
    plus what ``facts["adjusted"]`` records); ``facts``: what the run decided on the way."""
    from ownllm.training.callbacks import plot_losses
    from ownllm.training.methods import save_trained

    state = hf.state
    interrupted = hf.own_signals.requested
    budget = facts["budget"]
    stopped = ("interrupted" if interrupted else
               "time_budget" if budget and budget["callback"].hit else
               "early_stopping" if state.global_step < state.max_steps else
               "max_steps" if cfg.max_steps else "epochs_completed")
    from ownllm.training import distributed

    tokens_seen, trained_tokens = (distributed.sum_over_processes(hf.tokens_seen),
                                   distributed.sum_over_processes(hf.trained_tokens))
    if not distributed.is_main():  # only the main process writes the result, the summary and the plot
        return {"rank": distributed.state().process_index, "global_step": state.global_step}
    out_dir = save_trained(hf.model, tokenizer, run, cfg)
    history = hf.own_metrics.history
    # the model kept: the best checkpoint's, or (validation too small to choose on) the last step's
    evals = [h["step"] for h in history if "eval_loss" in h]
    kept = state.best_global_step if hf.args.load_best_model_at_end or not evals else evals[-1]
    losses = [h["loss"] for h in history if "loss" in h]
    wall = time.time() - start
    summary = {
        "run_dir": run.path, "method": cfg.method, "model": cfg.model, "output": out_dir,
        "train_rows": len(data.train), "val_rows": len(data.val), "rows_without_trained_tokens": dropped,
        **params, "global_step": state.global_step, "epochs": round(state.epoch or 0, 3),
        "train_tokens": tokens_seen, "trained_tokens": trained_tokens,
        "tokens_per_second": round(tokens_seen / wall, 1) if wall else 0, "processes": distributed.world_size(),
        "peak_memory_mb": _peak_memory_mb(device), "wall_seconds": round(wall, 1),
        "final_train_loss": losses[-1] if losses else None,
        "best_val_loss": _at_step(history, kept, "eval_loss",
                                  state.best_metric if hf.args.load_best_model_at_end else None),
        "best_checkpoint": state.best_model_checkpoint if hf.args.load_best_model_at_end else None,
        "best_checkpoint_by": hf.args.metric_for_best_model if hf.args.load_best_model_at_end else "last step",
        "general_drift": _at_step(history, kept, "eval_general_drift"),
        "regime": facts.get("regime"),
        "stopped_because": stopped, "skipped_nonfinite_steps": hf.skipped_nonfinite,
        "precision": precision, "device": device, "attention": facts["attention"],
        "added_terms": facts["added_terms"], "protection": facts["protection"], "continual": facts["continual"],
        "template": facts["template"], "bad_answers_left_out": facts.get("bad_answers_left_out", 0),
        "time_budget": None if not budget else {"budget_hours": budget["budget_hours"],
                                                "predicted_hours": budget["predicted_hours"],
                                                "actual_hours": round(wall / 3600, 6)},
        "effective_batch": cfg.batch_size * cfg.grad_accum * max(1, hf.args.world_size),
        "settings": {k: v for k, v in dataclasses.asdict(cfg).items() if k in
                     ("lr", "lora_r", "lora_alpha", "batch_size", "grad_accum", "epochs", "max_steps")},
        "adjusted": facts["adjusted"] or None,
    }
    atomic_write(run.summary_json, json.dumps(summary, indent=2, ensure_ascii=False))
    plot_losses(history, run.loss_png)
    best = summary["best_val_loss"]
    _log(f"ownllm: {stopped.replace('_', ' ')} after {state.global_step} steps in {wall:.0f}s "
         f"({summary['tokens_per_second']:.0f} tokens/s); best val loss {best if best is not None else 'n/a'}"
         + (f" (step {kept}, general drift {summary['general_drift']})"
            if summary["general_drift"] is not None else "") + f"; saved {out_dir}")
    if interrupted:
        _log(f"resume with: ownllm train --resume {run.path}")
    return summary
