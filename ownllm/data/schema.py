"""Schema detection (with explicit override) and conversion to canonical rows.

``detect_format`` looks at the keys of the first rows and says what it found and why;
``to_canonical`` turns one raw row into ``{"messages": [...]}`` or ``{"text": ...}`` or raises
``RowError`` with a reason code (the categories of the data report).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ownllm.data.formats import PAIR_SPELLINGS, ROLES, SHAREGPT_ROLES
from ownllm.errors import ConfigError, DataError


class RowError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class Schema:
    format: str      # messages | sharegpt | alpaca | prompt-completion | text | preference | labels | feedback
    why: str
    columns: dict = field(default_factory=dict)   # prompt/response/system column names


def parse_columns(spec: str | dict | None) -> dict:
    """``prompt=问题,response=答案[,system=...]`` → {"prompt": "问题", "response": "答案"}."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        pairs = spec.items()
    else:
        pairs = []
        for part in spec.split(","):
            if "=" not in part:
                raise ConfigError(f"--columns: '{part}' is not KEY=COLUMN",
                                  hint="e.g. --columns prompt=问题,response=答案")
            k, v = part.split("=", 1)
            pairs.append((k.strip(), v.strip()))
    out = {}
    for k, v in pairs:
        if k not in ("prompt", "response", "system", "text", "messages"):
            raise ConfigError(f"--columns: unknown key '{k}'", hint="keys: prompt, response, system, text, messages")
        out[k] = v
    return out


def detect_format(samples: list[dict], forced: str = "auto", columns: dict | None = None) -> Schema:
    """Decide the schema from sample rows (dicts). ``forced`` and ``columns`` override detection."""
    columns = columns or {}
    keys = Counter(k for row in samples if isinstance(row, dict) for k in row)
    seen = set(keys)
    if columns:
        missing = [c for c in columns.values() if c not in seen]
        if missing:
            raise DataError(f"--columns names column(s) not in the data: {', '.join(missing)}",
                            hint=f"columns found: {', '.join(sorted(seen)) or 'none'}")
        if "prompt" in columns and "response" in columns:
            return Schema("prompt-completion", f"--columns given: {columns}", columns)
        if "text" in columns:
            return Schema("text", f"--columns given: {columns}", columns)
        if "messages" in columns:
            return Schema("messages", f"--columns given: {columns}", columns)
        raise ConfigError("--columns needs prompt= and response=, or text=")
    if forced not in ("auto", None):
        return _forced(forced, seen)
    if not seen:
        raise DataError("no rows with fields were found", hint="each row must be a JSON object / CSV row")
    if "messages" in seen:
        return Schema("messages", "rows have a 'messages' list (OpenAI chat format)", {"messages": "messages"})
    if "conversations" in seen:
        return Schema("sharegpt", "rows have a 'conversations' list (ShareGPT format)",
                      {"messages": "conversations"})
    if "instruction" in seen and "output" in seen:
        return Schema("alpaca", "rows have 'instruction' and 'output' (Alpaca format)",
                      {"prompt": "instruction", "response": "output"})
    lower = {k.lower(): k for k in seen}
    for p, r in PAIR_SPELLINGS:
        if p in lower and r in lower:
            cols = {"prompt": lower[p], "response": lower[r]}
            if "system" in lower:
                cols["system"] = lower["system"]
            return Schema("prompt-completion", f"rows have '{lower[p]}' and '{lower[r]}' columns", cols)
    if "text" in lower:
        return Schema("text", "rows have a 'text' field (plain text for continued pre-training)",
                      {"text": lower["text"]})
    raise DataError(
        f"cannot tell the dataset's format from its fields: {', '.join(sorted(seen))}",
        hint="expected messages, conversations, instruction/output, prompt/completion (question/answer, "
             "问题/答案 ...), text, or preference data (prompt/chosen/rejected; prompt/completion/label); name yours "
             "with --columns prompt=COL,response=COL")


def _forced(fmt: str, seen: set) -> Schema:
    defaults = {"messages": {"messages": "messages"}, "sharegpt": {"messages": "conversations"},
                "alpaca": {"prompt": "instruction", "response": "output"}, "text": {"text": "text"}}
    if fmt == "prompt-completion":
        lower = {k.lower(): k for k in seen}
        for p, r in PAIR_SPELLINGS:
            if p in lower and r in lower:
                return Schema(fmt, "--format given", {"prompt": lower[p], "response": lower[r]})
        raise DataError("--format prompt-completion: no prompt/response column pair found",
                        hint="name them with --columns prompt=COL,response=COL")
    if fmt not in defaults:
        from ownllm.data.formats import FORMATS

        raise ConfigError(f"unknown --format '{fmt}'", hint=", ".join(FORMATS))
    return Schema(fmt, "--format given", defaults[fmt])


# -- conversion -----------------------------------------------------------------------------
def _text(value, what: str) -> str:
    if value is None:
        raise RowError("missing_field", f"'{what}' is missing")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RowError("wrong_type", f"'{what}' must be text, got {type(value).__name__}")
    return value


def _messages(value, sharegpt: bool) -> list[dict]:
    if value is None:
        raise RowError("missing_field", "no 'messages'/'conversations' list")
    if not isinstance(value, list):
        raise RowError("wrong_type", f"messages must be a list, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError("wrong_type", f"message {i} is not an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if not isinstance(role, str):
            raise RowError("missing_field", f"message {i} has no role")
        mapped = SHAREGPT_ROLES.get(role.lower()) if sharegpt or role.lower() not in ROLES else role.lower()
        if mapped is None:
            raise RowError("unknown_role", f"message {i} has role '{role}'")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({"role": mapped, "content": _text(content, f"message {i} content")})
    return out


def to_canonical(row, schema: Schema, system: str | None = None) -> dict:
    """One raw row → canonical row, or RowError."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is a {type(row).__name__}, not an object")
    fmt, cols = schema.format, schema.columns
    if fmt == "text":
        return {"text": _text(row.get(cols["text"]), cols["text"])}
    if fmt in ("messages", "sharegpt"):
        messages = _messages(row.get(cols["messages"]), fmt == "sharegpt")
        if "system" in row and isinstance(row["system"], str) and row["system"] and \
                (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": row["system"]})
    else:
        prompt = _text(row.get(cols["prompt"]), cols["prompt"])
        if fmt == "alpaca" and row.get("input"):
            prompt = f"{prompt}\n\n{_text(row['input'], 'input')}"
        messages = []
        sys_col = cols.get("system", "system")
        if isinstance(row.get(sys_col), str) and row[sys_col].strip():
            messages.append({"role": "system", "content": row[sys_col]})
        for turn in row.get("history") or []:
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
                raise RowError("wrong_type", "history must be a list of [question, answer] pairs")
            messages += [{"role": "user", "content": _text(turn[0], "history question")},
                         {"role": "assistant", "content": _text(turn[1], "history answer")}]
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": _text(row.get(cols["response"]), cols["response"])}]
    return {"messages": with_system(messages, system)}


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """``messages`` with ``system`` (--system) as their first turn, unless they open with one already."""
    if system and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages
