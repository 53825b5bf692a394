"""Preference data: which answer is better, read from what people and datasets say about answers.

Three shapes are read, detected from their fields (or named with ``--format``):

- ``preference`` — pairs: a prompt, a ``chosen`` and a ``rejected`` answer (TRL's and LLaMA-Factory's DPO
  files; the answers may be text or whole conversations, as in UltraFeedback or Anthropic HH);
- ``labels`` — one answer with a good/bad ``label`` (TRL's KTO files: prompt, completion, label);
- ``feedback`` — ``RUN/feedback.jsonl`` as ``ownllm chat``, serve and the studio write it
  (``data.feedback``): a better answer the person wrote is chosen against the model's answer; a bare
  good/bad becomes a labelled answer.

Each becomes one canonical chat row whose last assistant turn is the answer judged, so the cleaning,
checks, duplicate removal, split and token counts of supervised rows apply unchanged:

- a pair: ``{"messages": [..., {"role": "assistant", "content": CHOSEN}], "rejected": REJECTED}``
- a labelled answer: ``{"messages": [..., {"role": "assistant", "content": ANSWER}], "label": true|false}``

Supervised training learns the chosen and good answers (a better answer a person wrote is also a
supervised row) and never a bad one (:func:`supervised`).
"""
from __future__ import annotations

import unicodedata
from collections import Counter

from ownllm.data import schema as schemas
from ownllm.data.formats import PAIR_SPELLINGS
from ownllm.data.schema import RowError, Schema, _messages, _text

FORMATS = ("preference", "labels", "feedback")
PROMPT_KEYS = ("prompt", "question", "instruction", "query", "input", "user", "问题", "提问", "指令", "问")
LABEL_KEYS = ("label", "标签")
_TRUE = {"good", "true", "yes", "1", "👍", "+1", "好", "对", "是", "desirable", "chosen", "accept", "accepted"}
_FALSE = {"bad", "false", "no", "0", "👎", "-1", "差", "坏", "错", "否", "undesirable", "rejected", "reject"}


def detect_format(samples: list[dict], forced: str = "auto", columns: dict | None = None) -> Schema:
    """Every format's detection (``schema.detect_format``), preference data first: feedback, pairs and
    labelled answers also carry the fields of supervised formats (messages, prompt/completion)."""
    if columns or forced not in ("auto", None, *FORMATS):
        return schemas.detect_format(samples, forced, columns)
    seen = {k for row in samples if isinstance(row, dict) for k in row}
    if forced in FORMATS:
        return named(forced, seen)
    return detect(samples, seen) or schemas.detect_format(samples, forced, columns)


def canonical(row, schema: Schema, system: str | None = None) -> dict:
    """One raw row → its canonical row, for every format (``schema.to_canonical`` for supervised ones)."""
    if schema.format not in FORMATS:
        return schemas.to_canonical(row, schema, system)
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is a {type(row).__name__}, not an object")
    out = to_canonical(row, schema)
    schemas.with_system(out["messages"], system)
    return out


def parse_label(value) -> bool:
    """A good/bad label as it is spelled in the wild → True (good) or False (bad); else RowError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RowError("bad_label", f"label {value!r} is not good/bad (true/false, 1/0, 👍/👎)")


def _labelish(value) -> bool:
    try:
        parse_label(value)
        return True
    except RowError:
        return False


def detect(samples: list[dict], seen: set) -> Schema | None:
    """The preference shape of these sample rows, or None when they hold supervised data."""
    lower = {k.lower(): k for k in seen}
    if "messages" in seen and "answer" in seen and ({"label", "better"} & seen):
        return Schema("feedback", "rows have 'messages', 'answer' and 'label'/'better' (ownllm feedback)",
                      {"messages": "messages"})
    if "messages" in seen and ("rejected" in seen or ("label" in seen and all(
            _labelish(s["label"]) for s in samples if isinstance(s, dict) and "label" in s))):
        return Schema("preference", "rows have 'messages' ending in the judged answer, with a 'rejected' answer or a "
                                    "good/bad 'label' (prepared preference rows)", {"messages": "messages"})
    if "chosen" in lower and "rejected" in lower:
        cols = {"chosen": lower["chosen"], "rejected": lower["rejected"]}
        prompt = next((lower[k] for k in PROMPT_KEYS if k in lower), None)
        if prompt:
            cols["prompt"] = prompt
        if "system" in lower:
            cols["system"] = lower["system"]
        return Schema("preference", f"rows have '{cols['chosen']}' and '{cols['rejected']}' answers (preference "
                                    "pairs, as for DPO)", cols)
    cols = _label_columns(lower)
    if cols is None:
        return None
    values = [s[cols["label"]] for s in samples if isinstance(s, dict) and cols["label"] in s]
    if not values or sum(map(_labelish, values)) < 0.8 * len(values):
        return None  # a label column of categories, not judgements: the rows stay supervised
    return Schema("labels", f"rows have '{cols['prompt']}', '{cols['response']}' and a good/bad '{cols['label']}' "
                            "(labelled answers, as for KTO)", cols)


def _label_columns(lower: dict) -> dict | None:
    """Labelled answers' columns (prompt, response, label; system when there is one) among the fields ``lower``
    (lower-cased name → name), or None."""
    label = next((lower[k] for k in LABEL_KEYS if k in lower), None)
    pair = next(((lower[p], lower[r]) for p, r in PAIR_SPELLINGS if p in lower and r in lower), None)
    if label is None or pair is None:
        return None
    cols = {"prompt": pair[0], "response": pair[1], "label": label}
    if "system" in lower:
        cols["system"] = lower["system"]
    return cols


def named(fmt: str, seen: set) -> Schema:
    """``--format preference|labels|feedback``: the columns found for it, or a DataError saying what is missing."""
    from ownllm.errors import DataError

    cols = _label_columns({k.lower(): k for k in seen}) if fmt == "labels" else None
    schema = detect([], seen) if fmt != "labels" else None
    if cols is not None:
        return Schema(fmt, "--format given", cols)
    if schema is not None and schema.format == fmt:
        return Schema(fmt, "--format given", schema.columns)
    needs = {"preference": "'chosen' and 'rejected' answers (and a prompt)",
             "labels": "a prompt, an answer (completion/response/answer) and a 'label'",
             "feedback": "'messages', 'answer' and 'label' or 'better' (ownllm's feedback.jsonl)"}[fmt]
    raise DataError(f"--format {fmt}: the rows need {needs}", hint=f"fields found: {', '.join(sorted(seen)) or 'none'}")


def _prompt(row: dict, cols: dict) -> list[dict]:
    value = row.get(cols["prompt"]) if "prompt" in cols else None
    if isinstance(value, list):
        messages = _messages(value, sharegpt=False)
    elif value is None:
        messages = []
    else:
        messages = [{"role": "user", "content": _text(value, cols["prompt"])}]
    system = row.get(cols.get("system", "system"))
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _answer(value, what: str) -> tuple[list[dict], str]:
    """An answer given as text, or as a conversation whose last turn is the answer: (the turns before it, the
    answer's text)."""
    if isinstance(value, list):
        turns = _messages(value, sharegpt=False)
        if not turns or turns[-1]["role"] != "assistant":
            raise RowError("bad_order", f"the '{what}' conversation does not end with an assistant answer")
        return turns[:-1], turns[-1]["content"]
    return [], _text(value, what)


def to_canonical(row: dict, schema: Schema) -> dict:
    """One raw preference row → its canonical row (module docstring), or RowError."""
    cols = schema.columns
    if schema.format == "feedback":
        messages = _messages(row.get("messages"), sharegpt=False)
        answer = _text(row.get("answer"), "answer")
        better = row.get("better")
        if better is not None:
            out = {"messages": messages + [{"role": "assistant", "content": _text(better, "better")}],
                   "rejected": answer}
        elif row.get("label") is not None:
            out = {"messages": messages + [{"role": "assistant", "content": answer}], "label": parse_label(row["label"])}
        else:
            raise RowError("missing_field", "the feedback row has neither a 'label' nor a 'better' answer")
        if isinstance(row.get("model"), str) and row["model"]:
            out["model"] = row["model"]
        return out
    if schema.format == "preference" and "messages" in cols:  # prepared rows, read back (a stage re-prepares them)
        out = {"messages": _messages(row.get("messages"), sharegpt=False)}
        if "rejected" in row:
            out["rejected"] = _text(row["rejected"], "rejected")
        elif row.get("label") is not None:
            out["label"] = parse_label(row["label"])
        return out
    if schema.format == "preference":
        before_c, chosen = _answer(row.get(cols["chosen"]), cols["chosen"])
        before_r, rejected = _answer(row.get(cols["rejected"]), cols["rejected"])
        prompt = _prompt(row, cols)
        if not any(m["role"] == "user" for m in prompt):
            # Anthropic HH / UltraFeedback: the answers carry the conversation; it must be the same one
            if before_c != before_r:
                raise RowError("bad_order", "the chosen and rejected conversations differ before their last answer")
            prompt = before_c if not prompt else prompt + [m for m in before_c if m["role"] != "system"]
        return {"messages": prompt + [{"role": "assistant", "content": chosen}], "rejected": rejected}
    answer = _text(row.get(cols["response"]), cols["response"])
    return {"messages": _prompt(row, cols) + [{"role": "assistant", "content": answer}],
            "label": parse_label(row.get(cols["label"]))}


def kind(row: dict) -> str:
    """``pair``, ``good``, ``bad`` or ``supervised`` (a chat or text row with no judgement)."""
    if "rejected" in row:
        return "pair"
    if "label" in row:
        return "good" if row["label"] else "bad"
    return "supervised"


def supervised(rows: list[dict]) -> list[dict]:
    """The rows supervised training learns from: every row but the answers labelled bad (a pair's chosen
    answer and a good answer are learned as they stand)."""
    return [r for r in rows if r.get("label") is not False]


def same_answer(a: str, b: str) -> bool:
    """Two answers that say the same thing (case, width and spacing aside): a pair of them teaches nothing."""
    def norm(s: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", s).casefold().split())

    return norm(a) == norm(b)


def counts(rows: list[dict]) -> dict:
    """The data report's preference figures: rows of each kind, and which models' answers feedback judged."""
    kinds = Counter(kind(r) for r in rows)
    models = Counter(r["model"] for r in rows if isinstance(r.get("model"), str) and kind(r) != "supervised")
    return {"kinds": {k: kinds.get(k, 0) for k in ("supervised", "pair", "good", "bad")},
            "answers_by_model": dict(models.most_common())}
