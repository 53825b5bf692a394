"""Render canonical rows into token ids and labels for causal-LM training.

A row is ``{"messages": [...]}`` (chat) or ``{"text": ...}`` (continued pre-training).
Chat rows are rendered with the model's chat template (or a named one) and only assistant
tokens carry labels by default; every assistant turn of a multi-turn chat is trained.

Written here because most shipped chat templates lack the ``{% generation %}`` markers that
transformers' ``return_assistant_tokens_mask`` needs: we find assistant spans by rendering
growing prefixes of the conversation and map character spans to tokens with offsets.
"""
from __future__ import annotations

from dataclasses import dataclass

from ownllm.errors import DataError

IGNORE = -100


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]
    text: str
    truncated: bool
    full_length: int

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _template_render(tokenizer, messages, template, add_generation_prompt: bool) -> str:
    from ownllm.models.templates import render_chat

    return render_chat(tokenizer, messages, template, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], template: str | None) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the [start, end) character spans of each assistant turn (with its end token)."""
    text = _template_render(tokenizer, messages, template, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _template_render(tokenizer, messages[:i], template, True) if i else ""
        upto = _template_render(tokenizer, messages[: i + 1], template, False)
        if not text.startswith(upto) or not upto.startswith(before):
            raise DataError("the chat template does not render conversations incrementally, so the "
                            "assistant tokens cannot be found",
                            hint="pass a named template (--template chatml|llama3|qwen|deepseek|alpaca)")
        spans.append((len(before), len(upto)))
    return text, spans


def render_row(row: dict, tokenizer, *, template: str | None = None, max_seq_len: int = 1024,
               train_on_prompt: bool = False) -> Rendered:
    """Tokenize one canonical row; labels are -100 outside the trained spans. Truncates from the right."""
    if "text" in row and "messages" not in row:
        text = row["text"]
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = assistant_spans(tokenizer, row["messages"], template)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if train_on_prompt:
            labels = list(ids)
        else:
            labels = [tok if any(s <= start < e for s, e in spans) else IGNORE
                      for tok, (start, _end) in zip(ids, enc["offset_mapping"])]
    full = len(ids)
    truncated = full > max_seq_len
    if truncated:
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    return Rendered(ids, labels, text, truncated, full)


def marked_example(rendered: Rendered, tokenizer) -> str:
    """The rendered text with trained tokens wrapped in ⟦ ⟧, for the data report.

    Runs of tokens are decoded together: one Chinese character often spans two byte-level tokens,
    and decoding them one by one would show replacement characters.
    """
    out, run, inside = [], [], False
    for tok, lab in zip(rendered.input_ids, rendered.labels):
        trained = lab != IGNORE
        if trained != inside and run:
            out.append(("⟦" if inside else "") + tokenizer.decode(run) + ("⟧" if inside else ""))
            run = []
        inside = trained
        run.append(tok)
    if run:
        out.append(("⟦" if inside else "") + tokenizer.decode(run) + ("⟧" if inside else ""))
    return "".join(out)
