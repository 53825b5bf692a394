"""The tune stage: ``ownllm tune`` and ``Trainer.tune`` — the guide's 自动化微调 (automatic tuning), a
search over the settings a fine-tune depends on most, within the person's time budget.

Every trial is a training run on the run's own prepared split (its test rows are never seen) in
``RUN/tune/trial-N/``: trial 0 trains with the defaults, the others with settings Optuna's TPE sampler
proposes around them (learning rate, LoRA rank, epochs, forgetting protection's strength). A trial is
scored at every validation by ``score``: the validation loss plus ``DRIFT_WEIGHT`` times its general
drift (the KL from the base model on replayed general prompts), so a trial that learns the domain by
forgetting more scores worse; Optuna's median pruner stops a trial whose score is worse than the median
of earlier trials at the same step (after a warm-up of a third of the defaults' steps). The best trial
is the completed one with the lowest score at its best checkpoint; it becomes the run (its adapter,
checkpoints, metrics and summary move into ``RUN``), so the final model costs no second training.

Every finished trial is appended to ``RUN/tune/trials.jsonl`` as it ends; a crashed or interrupted
search, started again with the same command, re-tells those trials to the sampler and goes on.
``RUN/tune/tune.json`` holds the result: every trial, the rule, the chosen settings and the time spent.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass

from ownllm.config import setting
from ownllm.errors import ConfigError
from ownllm.utils import append_jsonl

DRIFT_WEIGHT = 2.0   # the default protection's KL weight: trials of either strength are scored alike
MAX_TRIALS = 20      # a budget alone never starts more trials than this
RANKS = (16, 32, 64, 128)
MOVED = ("adapter", "model", "checkpoints", "metrics.jsonl", "loss.png", "train_summary.json", "tensorboard")


@dataclass
class TuneConfig:
    """`ownllm tune`'s own settings; the run's (data, model, method, --time-budget, ...) are ``TrainConfig``'s."""
    trials: int | None = setting(None, "how many trials (with --time-budget: at most this many; default: as "
                                       f"many as the budget allows, up to {MAX_TRIALS})")
    no_prune: bool = setting(False, "train every trial to its end (default: a trial whose score is worse than the "
                                    "median of earlier trials at the same step stops early)")

    def validate(self) -> "TuneConfig":
        if self.trials is not None and (not isinstance(self.trials, int) or self.trials < 1):
            raise ConfigError(f"--trials must be an integer >= 1 (got {self.trials!r})")
        return self


@dataclass
class TuneResult:
    """What the tune stage returns: every trial, the best one (now the run's model) and the final summary."""
    trials: list[dict]
    best: dict
    summary: dict
    rule: str
    seconds: float

    def table(self) -> str:
        return format_trials(self.trials, self.best["number"])


RULE = (f"lowest validation loss + {DRIFT_WEIGHT:g} x general drift at the trial's best checkpoint, among "
        "trials that trained to their end (trial 0 is the defaults)")


def score(val_loss: float | None, drift: float | None) -> float | None:
    """What the search minimises: the validation loss plus ``DRIFT_WEIGHT`` times the general drift (0 when
    the run measures none: protection off)."""
    if val_loss is None or not math.isfinite(val_loss):
        return None
    return val_loss + DRIFT_WEIGHT * (drift or 0.0)


def require_limit(time_budget: str | None, trials: int | None) -> None:
    """A search needs an end: a time budget or a number of trials."""
    if not time_budget and not trials:
        raise ConfigError("say how long the search may take: --time-budget (e.g. 30m) or --trials N")


def search_space(cfg, defaults, n_train: int | None = None) -> dict:
    """The Optuna distributions of the settings ``cfg`` leaves to us (a setting the person gave is fixed),
    around the dataset's defaults ``defaults`` (``resolve_defaults``' result) for ``n_train`` training rows
    (on a small dataset the default protection is already strong's: not searched)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from ownllm.training.protect import METHODS as PROTECTABLE
    from ownllm.training.protect import protection_for

    space = {}
    if cfg.lr is None:
        space["lr"] = FloatDistribution(defaults.lr / 4, min(0.5, defaults.lr * 3), log=True)
    if cfg.lora_r is None and defaults.lora_r:
        space["lora_r"] = CategoricalDistribution(RANKS)
    if cfg.epochs is None and cfg.max_steps is None:
        space["epochs"] = IntDistribution(max(1, round(defaults.epochs / 2)), max(2, round(defaults.epochs * 2)))
    levels = {protection_for(dataclasses.replace(cfg, protect=p), n_train) for p in ("default", "strong")}
    if cfg.protect != "off" and cfg.method in PROTECTABLE and len(levels) == 2:
        space["protect"] = CategoricalDistribution(("default", "strong"))
    return space


def _default_params(space: dict, defaults) -> dict:
    out = {}
    for name, dist in space.items():
        value = getattr(defaults, name)
        if hasattr(dist, "choices") and value not in dist.choices:
            value = min(dist.choices, key=lambda c: abs(c - value))
        out[name] = value
    return out


class _Pruning:
    """A transformers callback that reports each validation's score to the Optuna trial and stops
    training when the pruner says so."""

    def __new__(cls, trial, warmup_steps: int):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def __init__(self):
                self.pruned_at = None
                self.scores: dict[int, float] = {}  # step → score, as reported

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                value = score((metrics or {}).get("eval_loss"), (metrics or {}).get("eval_general_drift"))
                if value is None:
                    return control
                self.scores[state.global_step] = round(value, 5)
                if trial is None:
                    return control
                trial.report(value, state.global_step)
                if state.global_step >= warmup_steps and trial.should_prune():
                    self.pruned_at = state.global_step
                    control.should_training_stop = True
                return control

        return Callback()


def _read_trials(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash: that trial runs again
                break
    return out


def trials_view(run_path: str) -> dict | None:
    """What the studio's trial plot shows of a run's search: each trial ``RUN/tune/trials.jsonl`` holds so far
    (number, settings, state, score and its parts, steps, seconds), the chosen one (the run's ``tuned_by``, else
    the lowest score so far) and the rule. None when the run was not tuned, or was trained again since."""
    from ownllm.rundir import RunDir

    summary = RunDir(run_path).summary() or {}
    if summary and "tuned_by" not in summary:  # trained without tune (the studio polls this: no trials read)
        return None
    trials = _read_trials(os.path.join(run_path, "tune", "trials.jsonl"))
    if not trials:
        return None
    scored = [t for t in trials if t.get("state") == "complete" and t.get("score") is not None]
    if summary:
        best = summary["tuned_by"]["trial"]
    else:
        best = min(scored, key=lambda t: t["score"])["number"] if scored else None
    keys = ("number", "params", "state", "score", "val_loss", "general_drift", "steps", "seconds", "stopped_because")
    return {"trials": [{k: t.get(k) for k in keys} for t in trials], "best": best, "rule": RULE}


def _retell(study, space: dict, done: list[dict]) -> None:
    """Trials of an earlier, interrupted search: told to the sampler and the pruner as they went."""
    import optuna

    for t in done:
        params = {k: v for k, v in t["params"].items() if k in space}
        if set(params) != set(space):
            continue
        state = optuna.trial.TrialState.PRUNED if t["state"] == "pruned" else optuna.trial.TrialState.COMPLETE
        value = t["score"] if state == optuna.trial.TrialState.COMPLETE and t["score"] is not None else None
        if state == optuna.trial.TrialState.COMPLETE and value is None:
            state = optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space, value=value, state=state,
            intermediate_values={int(k): v for k, v in (t.get("scores_by_step") or {}).items()}))


def tune_run(cfg, data, run, options: TuneConfig | None = None) -> TuneResult:
    """The tune stage. ``cfg``: the run's ``TrainConfig`` (what the person asked: its ``time_budget`` bounds
    the whole search); ``data``: the prepared data (``PreparedData``), already in ``run``'s data/;
    ``run``: the run directory, which ends holding the best trial's model. Returns a ``TuneResult``."""
    import optuna

    from ownllm.planning.plan import parse_duration
    from ownllm.rundir import RunDir
    from ownllm.training.defaults import resolve_defaults
    from ownllm.training.plan import plan_run
    from ownllm.training.train import train_run

    from ownllm.training.config import PREFERENCE_METHODS

    if cfg.method in PREFERENCE_METHODS:
        raise ConfigError(f"ownllm tune searches supervised runs; --method {cfg.method} is not searched yet",
                          hint=f"ownllm train --method {cfg.method} with its defaults, or set --lr and --epochs")
    options = (options or TuneConfig()).validate()
    require_limit(cfg.time_budget, options.trials)
    budget = parse_duration(cfg.time_budget) * 3600 if cfg.time_budget else None
    if not data.val:
        raise ConfigError("tuning needs validation rows to score trials on, and this data has none",
                          hint="give more rows (10 or more), or a --split with a validation share")
    defaults = resolve_defaults(dataclasses.replace(cfg), len(data.train))
    space = search_space(cfg, defaults, len(data.train))
    if not space:
        raise ConfigError("every searched setting was given (--lr, --lora-r, --epochs, --protect off): nothing to tune",
                          hint="leave out the settings the search should choose")
    folder = os.path.join(run.path, "tune")
    os.makedirs(folder, exist_ok=True)
    log_path = os.path.join(folder, "trials.jsonl")
    done = _read_trials(log_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warmup = max(1, _steps(defaults, len(data.train)) // 3)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2) if not options.no_prune
                                else optuna.pruners.NopPruner())
    _retell(study, space, done)
    if not done:
        study.enqueue_trial(_default_params(space, defaults))
    start = time.time()
    spent_before = sum(t["seconds"] for t in done)
    trials = list(done)
    limit = options.trials or MAX_TRIALS
    while len(trials) < limit:
        trial = study.ask(space)
        number = len(trials)
        settings = dataclasses.replace(cfg, **trial.params, out=os.path.join(folder, f"trial-{number}"),
                                       data=run.path, time_budget=None)
        planned = plan_run(settings, data, None, strict=False)
        predicted = planned.estimate.get("hours", 0) * 3600
        left = None if budget is None else budget - spent_before - (time.time() - start)
        if left is not None and left < predicted * 0.5:
            if not trials:
                raise ConfigError(f"--time-budget {cfg.time_budget} is shorter than one trial: training with the "
                                  f"defaults takes ~{predicted / 60:.0f} min here (the planner's estimate)",
                                  hint="give a longer --time-budget, or train once with `ownllm train`")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        if left is not None and left < predicted:  # the last trial gets what is left: it stops gracefully
            settings.time_budget = f"{int(left)}s"
            planned = plan_run(settings, data, None, strict=False)
        callback = _Pruning(trial if not options.no_prune else None, warmup)
        trial_run = RunDir(settings.out)
        shutil.rmtree(trial_run.path, ignore_errors=True)  # a trial a crash cut short starts again
        t0 = time.time()
        result = train_run(planned.settings, data, trial_run,
                           callbacks=[callback])
        summary = result.summary
        pruned = callback.pruned_at is not None
        value = score(summary.get("best_val_loss"), summary.get("general_drift"))
        row = {"number": number, "params": dict(trial.params), "state": "pruned" if pruned else "complete",
               "score": None if value is None else round(value, 5), "val_loss": summary.get("best_val_loss"),
               "general_drift": summary.get("general_drift"), "steps": summary["global_step"],
               "stopped_because": "pruned" if pruned else summary["stopped_because"],
               "seconds": round(time.time() - t0, 1), "predicted_seconds": round(predicted, 1),
               "scores_by_step": {str(k): v for k, v in callback.scores.items()}}
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            _drop_weights(trial_run)
        elif value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
        trials.append(row)
        append_jsonl(log_path, row)
        _log(f"ownllm tune: trial {number} {_params_text(row['params'])}: "
             + (f"score {row['score']}" if row["score"] is not None else "no score")
             + f" ({row['stopped_because'].replace('_', ' ')}, {row['steps']} steps, {row['seconds']:.0f} s)")
        del result
    finished = [t for t in trials if t["state"] == "complete" and t["score"] is not None]
    if not finished:
        raise ConfigError("no trial finished with a validation score", hint="see RUN/tune/trials.jsonl")
    best = min(finished, key=lambda t: (t["score"], t["number"]))
    summary = _promote(run, os.path.join(folder, f"trial-{best['number']}"), cfg, best, data)
    seconds = spent_before + time.time() - start
    out = TuneResult(trials, best, summary, RULE, round(seconds, 1))
    from ownllm.utils import atomic_write

    atomic_write(os.path.join(folder, "tune.json"), json.dumps(
        {"rule": RULE, "best": best, "settings": summary.get("settings"), "seconds": out.seconds,
         "time_budget": cfg.time_budget, "trials": trials, "space": {k: repr(v) for k, v in space.items()}},
        ensure_ascii=False, indent=2))
    return out


def _steps(settings, n_train: int) -> int:
    """Optimizer steps of a run of ``settings`` on ``n_train`` rows, the replayed general answers counted (the
    pruner's warm-up is a third of the defaults' run: left out, it judged trials after a fifth of it)."""
    from ownllm.planning.estimate import steps_per_epoch
    from ownllm.training.protect import replay_for_plan

    rows = n_train + replay_for_plan(settings.protect, settings.method, n_train)
    per_epoch = steps_per_epoch(rows, settings.batch_size, settings.grad_accum, 1)
    return settings.max_steps or max(1, per_epoch * int(math.ceil(float(settings.epochs))))


def _drop_weights(trial_run) -> None:
    """A pruned trial keeps its record and metrics, not its weights."""
    for name in ("checkpoints", "adapter", "model"):
        shutil.rmtree(os.path.join(trial_run.path, name), ignore_errors=True)


def _promote(run, trial_dir: str, cfg, best: dict, data) -> dict:
    """The best trial becomes the run: its model, checkpoints, metrics and summary move into ``run``; config.yaml
    records the chosen settings (``ownllm train runs/NAME/config.yaml`` trains them again)."""
    from ownllm.training.train import save_config
    from ownllm.utils import atomic_write

    for name in MOVED:
        src, dst = os.path.join(trial_dir, name), os.path.join(run.path, name)
        if os.path.exists(src):
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            elif os.path.exists(dst):
                os.remove(dst)
            os.replace(src, dst)
    summary = json.loads(open(run.summary_json, encoding="utf-8").read())
    summary.update(run_dir=run.path, output=os.path.join(run.path, os.path.basename(summary["output"])),
                   tuned_by={"trial": best["number"], "params": best["params"], "score": best["score"], "rule": RULE})
    atomic_write(run.summary_json, json.dumps(summary, indent=2, ensure_ascii=False))
    chosen = dataclasses.replace(cfg, **best["params"], out=run.path, data=run.path, time_budget=None)
    save_config(chosen, run, getattr(data, "report", {}).get("settings"))
    from ownllm.training.plan import plan_run

    plan_run(chosen, data, run, strict=False)  # plan.json: the chosen settings, as `ownllm plan` shows them
    return summary


def _params_text(params: dict) -> str:
    return ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def format_trials(trials: list[dict], best: int | None = None) -> str:
    """The trials as a table a person reads (the best one marked)."""
    names = sorted({k for t in trials for k in t["params"]})
    head = ["trial", *names, "score", "val loss", "drift", "steps", "seconds", "ended"]
    rows = []
    for t in trials:
        cells = [f"{t['number']}{' *' if t['number'] == best else ''}"]
        cells += [(f"{t['params'][n]:.2g}" if isinstance(t["params"].get(n), float) else str(t["params"].get(n, "")))
                  for n in names]
        cells += [_num(t["score"]), _num(t["val_loss"]), _num(t["general_drift"]), str(t["steps"]),
                  f"{t['seconds']:.0f}", t["stopped_because"].replace("_", " ")]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _log(msg: str) -> None:
    from ownllm.training import distributed

    if distributed.is_main():
        print(msg, flush=True)
