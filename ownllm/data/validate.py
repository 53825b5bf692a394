"""Checks on a canonical row; each failure has a reason code used in rejected.jsonl and the report."""
from __future__ import annotations

from ownllm.data.schema import RowError

REASONS = {
    "bad_json": "line is not valid JSON",
    "bad_encoding": "the row holds bytes that are not valid in the file's encoding",
    "not_an_object": "row is not a JSON object",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong type",
    "unknown_role": "a message has an unknown role",
    "empty_content": "a message or text is empty",
    "no_assistant_turn": "the conversation has no assistant answer to learn",
    "bad_order": "a system message after the start, or a conversation that does not start with the user",
    "too_long": "the row is far longer than the maximum sequence length",
    "identical_pair": "the chosen and rejected answers are the same: the pair teaches nothing",
    "bad_label": "a label is not good or bad (true/false, 1/0, 👍/👎)",
    "duplicate": "exact duplicate of an earlier row",
    "near_duplicate": "near-duplicate of an earlier row",
    "leakage": "near-duplicate of a validation/test row (removed from train)",
}


def check_row(row: dict, max_chars: int) -> None:
    """Raise RowError when the canonical row cannot be trained on."""
    if "text" in row:
        if not row["text"].strip():
            raise RowError("empty_content", "text is empty")
        if len(row["text"]) > max_chars:
            raise RowError("too_long", f"{len(row['text']):,} characters (limit {max_chars:,})")
        return
    messages = row["messages"]
    if not messages:
        raise RowError("missing_field", "messages is empty")
    for i, m in enumerate(messages):
        if not m["content"].strip():
            raise RowError("empty_content", f"message {i} ({m['role']}) is empty")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RowError("no_assistant_turn", "no message has role 'assistant'")
    if roles.count("system") > 1 or ("system" in roles and roles[0] != "system"):
        raise RowError("bad_order", "a system message may only come first")
    turns = [r for r in roles if r != "system"]
    if turns[0] != "user":
        raise RowError("bad_order", "the first non-system message must be from the user")
    total = sum(len(m["content"]) for m in messages)
    if "rejected" in row or "label" in row:
        total += _judged(row, roles)
    if total > max_chars:
        raise RowError("too_long", f"{total:,} characters (limit {max_chars:,})")


def _judged(row: dict, roles: list[str]) -> int:
    """Checks on a preference row (``data.preference``); returns the characters it adds."""
    from ownllm.data.preference import same_answer

    if roles[-1] != "assistant" or len(roles) < 2 or roles[-2] != "user":
        raise RowError("bad_order", "a judged answer must answer a user message: the conversation ends with the "
                                    "user's question, then the answer")
    if "label" in row and not isinstance(row["label"], bool):
        raise RowError("bad_label", f"label {row['label']!r} is not true or false")
    if "rejected" not in row:
        return 0
    rejected = row["rejected"]
    if not isinstance(rejected, str):
        raise RowError("wrong_type", f"'rejected' must be text, got {type(rejected).__name__}")
    if not rejected.strip():
        raise RowError("empty_content", "the rejected answer is empty")
    if same_answer(rejected, row["messages"][-1]["content"]):
        raise RowError("identical_pair", "the chosen and rejected answers are the same")
    return len(rejected)
