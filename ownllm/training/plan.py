"""The plan stage: the settings a run will train with on this data, and what they cost on the hardware.

``plan_run(cfg, data, run)`` fills the settings ``cfg`` leaves to us from the dataset's size
(``defaults.resolve_defaults``: the same choice ``ownllm train`` makes), counts forgetting protection's
replayed rows, asks the planner (``ownllm.planning``) for memory and time on this machine (or a
``PlanConfig.gpu`` profile), and writes ``run/plan.json``. ``ownllm plan``, the studio's plan step, the
guide's ``Trainer`` and ``quickstart`` all call it, so the plan a person reads is the run that starts.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ownllm.config import setting
from ownllm.errors import ConfigError


@dataclass
class PlanConfig:
    """`ownllm plan`'s own settings: the hardware side and, without data, its size. The run's settings
    (model, method, epochs, batch, rank, protection, budget) are ``TrainConfig``'s."""
    gpu: str | None = setting(None, "hardware profile, e.g. 'RTX 4090', A100, H100, cpu (default: this machine)")
    gpus: int = setting(1, "data-parallel devices (memory is per device, time for all)")
    zero_stage: int = setting(0, "DeepSpeed ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also weights",
                              choices=(0, 1, 2, 3))
    mfu: float | None = setting(None, "utilisation to assume (default: 0.40 GPU, 0.28 QLoRA, 0.45 CPU)")
    calibrate: bool = setting(False, "measure utilisation and the fixed cost per step with a few real steps here")
    price_per_hour: float | None = setting(None, "USD per device-hour (default: example cloud prices)")
    examples: int | None = setting(None, "training examples (without --data)")
    tokens_per_example: float | None = setting(None, "mean tokens per example (without --data)")

    def validate(self) -> "PlanConfig":
        p = []
        if not isinstance(self.gpus, int) or self.gpus < 1:
            p.append(f"--gpus must be an integer >= 1 (got {self.gpus!r})")
        if self.zero_stage not in (0, 1, 2, 3):
            p.append(f"--zero-stage must be 0, 1, 2 or 3 (got {self.zero_stage!r})")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            p.append(f"--mfu must be in (0, 1] (got {self.mfu})")
        for name in ("examples", "tokens_per_example"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                p.append(f"--{name.replace('_', '-')} must be > 0 (got {v})")
        if self.price_per_hour is not None and self.price_per_hour < 0:
            p.append(f"--price-per-hour must be >= 0 (got {self.price_per_hour})")
        if p:
            raise ConfigError(p)
        return self


CHOSEN = ("lr", "lora_r", "epochs", "early_stopping_patience")  # the settings the data's size decides unless given


@dataclass
class RunPlan:
    """What the plan stage returns: the settings training will use and the planner's figures for them."""
    settings: object    # TrainConfig, every default resolved for this data
    estimate: dict      # planning.plan.plan(): memory, time, cost, budget, recommendation ({}: no shape known)
    text: str           # the estimate as a person reads it
    regime: dict | None = None  # data.regime.size_regime(): which size regime the data is in, and why (None: no data)
    chosen_by: dict | None = None  # each searchable setting: "given" (the person's) or "defaults" (the regime's)

    def to_json(self) -> dict:
        chosen = ("model", "method", "lr", "lora_r", "lora_alpha", "batch_size", "grad_accum", "epochs",
                  "max_steps", "max_seq_len", "protect", "time_budget", "gradient_checkpointing", "early_stopping_patience")
        return {**self.estimate, "settings": {k: getattr(self.settings, k) for k in chosen}, "regime": self.regime,
                "chosen_by": self.chosen_by, "text": self.text}


def split_sizes(data) -> dict:
    """``{train, val, test}`` rows of prepared data (a ``PreparedData`` or a prepared ``RunDir``)."""
    from ownllm.rundir import RunDir

    if isinstance(data, RunDir):
        return dict((data.data_report() or {}).get("splits") or {})
    return {"train": len(data.train), "val": len(data.val), "test": len(data.test)}


def data_size(data) -> tuple[int, float, list[int] | None]:
    """(training rows, mean tokens per row, every row's tokens when known) of prepared data: a
    ``PreparedData`` (in memory, its lengths exact) or a ``RunDir`` (from its data report's histogram)."""
    from ownllm.data.report import lengths_from_histogram
    from ownllm.rundir import RunDir

    if isinstance(data, RunDir):
        rows, mean, histogram = data.data_stats()
        return rows, mean, lengths_from_histogram(histogram)
    report = data.report
    rows = report["splits"]["train"]
    lengths = report.get("_lengths")
    if lengths:  # every split's rows: the same distribution as the training rows'
        lengths = [min(n, report["max_seq_len"]) for n in lengths]
    else:
        lengths = lengths_from_histogram(report.get("length_histogram"))
    return rows, (report.get("tokens") or {}).get("mean") or 0.0, lengths


def plan_run(cfg, data=None, run=None, options: PlanConfig | None = None, measured: dict | None = None,
             strict: bool = True) -> RunPlan:
    """The plan stage. ``cfg``: the run's ``TrainConfig`` (what was asked); ``data``: its prepared data (a
    ``PreparedData`` or a prepared ``RunDir``), or None with ``options.examples`` and ``tokens_per_example``;
    ``run``: the run directory whose ``plan.json`` it writes (None: write nothing); ``measured``: what
    ``calibrate`` measured here; ``strict``: a model whose shape the planner does not know (a .gguf file,
    a hub id outside the registry) is an error — else the plan holds the settings and says there is no
    estimate (training needs none; loading the model says what is wrong with its name). Returns a new
    plan; ``cfg`` is left as it was."""
    from ownllm.errors import ModelNotFoundError
    from ownllm.models.load import resolve
    from ownllm.planning.plan import format_plan, parse_duration, plan, spec_for
    from ownllm.planning.profiles import get_profile, this_machine
    from ownllm.training.defaults import resolve_defaults
    from ownllm.training.protect import DRIFT_ROWS, REPLAY_TOKENS_PER_ROW, replay_for_plan

    options = (options or PlanConfig()).validate()
    from ownllm.data.regime import size_regime

    regime = None
    if data is not None:
        examples, tpe, lengths = data_size(data)
        splits = split_sizes(data)
        regime = size_regime(splits.get("train", examples), splits.get("val", 0), splits.get("test", 0))
    else:
        examples, tpe, lengths = options.examples, options.tokens_per_example, None
    if not examples or not tpe:
        raise ConfigError("say how much data: --examples N --tokens-per-example T, or --data FILE|RUN_DIR")
    settings = resolve_defaults(dataclasses.replace(cfg), examples, splits.get("val") if regime else None)
    chosen_by = {k: "given" if getattr(cfg, k) is not None else "defaults" for k in CHOSEN}
    if strict:
        resolve(settings.model)  # an unknown model: the loader's message (aliases, cache, hub ids) first
    try:
        spec = spec_for(settings.model)
    except ModelNotFoundError as e:
        if strict:
            raise
        result = RunPlan(settings, {}, f"no estimate: {e.args[0]}", regime, chosen_by)
        _write(result, run)
        return result
    measured = measured or {"mfu": options.mfu, "step_seconds": 0.0}
    from ownllm.training.preference import COST

    cost = COST.get(settings.method, 1.0)  # a preference row computes two answers, and the reference's passes
    estimate = plan(spec, get_profile(options.gpu) if options.gpu else this_machine(),
                    examples=examples, tokens_per_example=round(tpe * cost), epochs=float(settings.epochs), method=settings.method,
                    budget_hours=parse_duration(settings.time_budget), micro_batch=settings.batch_size,
                    grad_accum=settings.grad_accum, lora_r=settings.lora_r or 16,
                    gradient_checkpointing=settings.gradient_checkpointing, mfu=measured["mfu"], gpus=options.gpus,
                    price_per_hour=options.price_per_hour, zero_stage=options.zero_stage,
                    replay_rows=replay_for_plan(settings.protect, settings.method, examples),
                    replay_tokens_per_example=REPLAY_TOKENS_PER_ROW, drift_rows=DRIFT_ROWS, lengths=lengths,
                    step_seconds=measured["step_seconds"])
    text = format_plan(estimate) + (f"\ndata size: {regime['name']} — {regime['why']}" if regime else "")
    if cost != 1.0:
        text += (f"\n{settings.method}: each row counted as {cost:.2g}× a supervised row's tokens (the chosen and the "
                 "rejected answer" + (", and the reference's forward passes)" if settings.method != "orpo" else ")"))
    result = RunPlan(settings, estimate, text, regime, chosen_by)
    _write(result, run)
    return result


def _write(result: RunPlan, run) -> None:
    """run/plan.json (main process only; nothing without a run)."""
    from ownllm.training import distributed
    from ownllm.utils import atomic_write

    if run is not None and distributed.is_main():
        atomic_write(run.plan_json, json.dumps(result.to_json(), ensure_ascii=False, indent=2))
