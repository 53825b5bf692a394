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
    if total > max_chars:
        raise RowError("too_long", f"{total:,} characters (limit {max_chars:,})")
