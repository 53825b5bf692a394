"""One dataclass per stage, written once, becomes everything a person sets that stage with.

Each stage keeps its settings in a dataclass on its own floor (``PrepareConfig`` in ``data/prepare.py``,
``TrainConfig`` in ``training/config.py``, ``PlanConfig`` in ``training/plan.py``, ...), its fields made with
:func:`setting` (default + help). This module turns such a class into its command-line flags
(:func:`add_flags`, help from the field), its studio request model (:func:`request_model`) and its
``config.yaml`` mapping (:func:`load_yaml`, :func:`save_yaml`). It knows no stage: the foundation floor.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import field, fields

from ownllm.errors import ConfigError


def setting(default, help: str, *, aliases: tuple[str, ...] = (), cli: bool = True, choices=None,
            metavar: str | None = None, **kw):
    """A stage field: its default, its help (``--help`` and the studio), other flag names it answers to
    (``--micro-batch`` for ``batch_size``), whether it is a flag at all, its choices and its metavar. A
    list field is a repeatable flag."""
    meta = {"help": help, "cli": cli, "aliases": tuple(aliases), "choices": tuple(choices) if choices else None,
            "metavar": metavar, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _field_type(cls, f) -> tuple[type, bool]:
    """(the field's plain type, whether None is allowed)."""
    typ = typing.get_type_hints(cls)[f.name]
    inner = [t for t in typing.get_args(typ) if t is not type(None)]
    if not inner:
        return typ, False
    return (float if set(inner) == {float, int} else inner[0]), len(inner) < len(typing.get_args(typ))


# -- command-line flags ------------------------------------------------------------------------------
def add_flags(parser, cls, skip=(), only=None) -> None:
    """One flag per field of ``cls`` (``--field-name`` and its aliases), help from its metadata.
    Every flag defaults to None, so :func:`values_from_args` tells "not given" from a value."""
    for f in fields(cls):
        if f.name in skip or (only is not None and f.name not in only) or not f.metadata.get("cli", True):
            continue
        names = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        typ, _ = _field_type(cls, f)
        help_text, extra = f.metadata["help"], {"metavar": f.metadata["metavar"]} if f.metadata.get("metavar") else {}
        if typ is bool:
            parser.add_argument(*names, dest=f.name, action="store_true", default=None, help=help_text)
        elif typing.get_origin(typ) in (list, tuple):  # a repeatable flag
            parser.add_argument(*names, dest=f.name, action="append", default=None, help=help_text, **extra)
        else:
            conv = {int: int, float: float}.get(typ, str)
            parser.add_argument(*names, dest=f.name, type=conv, default=None, help=help_text,
                                choices=f.metadata.get("choices"), **extra)


def values_from_args(args, cls) -> dict:
    """The fields of ``cls`` given on the command line (flags added by :func:`add_flags`)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def _by_name(cls) -> dict:
    return {f.name: f for f in fields(cls)}


# -- the studio's request models ---------------------------------------------------------------------
def request_model(cls, name: str, only=None, defaults: dict | None = None, extra: dict | None = None):
    """A pydantic model of ``cls``'s fields (or ``only`` those), with ``defaults`` replacing the dataclass's,
    plus ``extra`` fields (name: (type, default)). Unknown keys are refused; ``validate()`` of the stage's
    dataclass checks the values, so the page and the CLI refuse the same things with the same words."""
    from pydantic import ConfigDict, create_model

    spec = {**request_fields(cls, only, defaults), **(extra or {})}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **spec)


def request_fields(cls, only=None, defaults: dict | None = None) -> dict:
    """``request_model``'s fields of ``cls`` (name: (type, pydantic Field)): a request made of two stages'
    dataclasses passes one's as the other's ``extra``."""
    from pydantic import Field

    hints = typing.get_type_hints(cls)
    spec = {}
    for f in fields(cls):
        if (only is not None and f.name not in only) or not f.metadata.get("cli", True):
            continue
        default = (defaults or {}).get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        spec[f.name] = (hints[f.name] | None if default is None else hints[f.name],
                        Field(default, description=f.metadata.get("help")))
    return spec


# -- config.yaml and key=value overrides -----------------------------------------------------------
def coerce(cls, key: str, value):
    """Turn a string from the command line into the field's type."""
    names = _by_name(cls)
    key = key.replace("-", "_")
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3)
        raise ConfigError(f"unknown setting '{key}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if not isinstance(value, str):
        return key, value
    import yaml

    parsed = yaml.safe_load(value) if value != "" else None
    typ = str(names[key].type)
    if "str" in typ and not isinstance(parsed, (str, type(None))):
        parsed = value
    elif isinstance(parsed, str) and ("float" in typ or "int" in typ):
        # YAML 1.1 reads "1e-3" (no dot) as a string; a number field means a number
        try:
            parsed = float(value) if "float" in typ else int(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number (got {value!r})") from None
    return key, parsed


def load_yaml(path: str, cls, overrides: list[str] | None = None):
    """``cls`` from a YAML mapping of its fields (a dict field is a section of its own, e.g. ``prepare:``),
    with ``key=value`` ``overrides``."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", where=path) from None
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping of settings", where=path)
    values, problems = {}, []
    for k, v in list(raw.items()) + [tuple(o.split("=", 1)) if "=" in o else (o, None) for o in overrides or []]:
        try:
            key, val = coerce(cls, str(k), v)
            values[key] = val
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems, where=path)
    return cls(**values)


def save_yaml(cfg, path: str, header: str = "") -> None:
    """``cfg``'s set fields as YAML (a dict field becomes a section)."""
    import yaml

    from ownllm.utils import atomic_write

    data = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    atomic_write(path, header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
