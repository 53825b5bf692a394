"""Question–answer structure a document already has → pairs, no model needed.

Recognised, in English and Chinese: ``Q:``/``A:`` (also ``Question:``/``Answer:``, ``问：``/``答：``)
in one paragraph or in consecutive ones; ``Question``/``Answer`` (``问题``/``答案``) headings; a heading
ending in ``?``/``？`` followed by its text; tables whose header names a question and an answer
column; in plain text, a one-line question paragraph followed by its answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ownllm.data.documents import Passage

_Q = r"(?:Q|Question|问|问题|提问)"
_A = r"(?:A|Answer|答|答案|回答)"
_Q_MARK = re.compile(rf"^\s*{_Q}\s*\d*\s*[:：]\s*", re.I)
_A_MARK = re.compile(rf"^\s*{_A}\s*\d*\s*[:：]\s*", re.I)
# an answer marker inside the question's paragraph: after a space or the question's own punctuation
_A_INLINE = re.compile(rf"(?:(?<=\s)|(?<=[?？.。!！]))\s*{_A}\s*[:：]\s*", re.I)
_Q_HEADING = re.compile(r"^\s*(?:questions?|q|问题|提问|问)\s*[:：]?\s*$", re.I)
_A_HEADING = re.compile(r"^\s*(?:answers?|a|答案|回答|答)\s*[:：]?\s*$", re.I)
_Q_COLUMN = re.compile(r"^\s*(?:questions?|q|faq|问题|问|提问|常见问题)\s*$", re.I)
_A_COLUMN = re.compile(r"^\s*(?:answers?|a|reply|response|答案|答|回答|解答)\s*$", re.I)
_NUMBERING = re.compile(r"^\s*(?:\d+[.)、．]|[（(]\d+[)）])\s*")


@dataclass
class Pair:
    question: str
    answer: str
    first: Passage       # where the question is
    last: Passage        # where the answer ends
    how: str             # q_a_markers | question_heading | qa_headings | table | question_line


def _is_question(text: str) -> bool:
    return text.rstrip().endswith(("?", "？"))


def extract_pairs(passages: list[Passage]) -> list[Pair]:
    """Every question–answer pair the passages state, in document order."""
    pairs, i = [], 0
    while i < len(passages):
        p = passages[i]
        found, nxt = None, i + 1
        if p.kind == "table":
            pairs += _table_pairs(p)
        elif p.kind == "heading" and _Q_HEADING.match(p.text):
            found, nxt = _qa_headings(passages, i)
        elif p.kind == "heading" and _is_question(p.text):
            body, nxt = _body(passages, i + 1)
            if body:
                answer = _A_MARK.sub("", "\n".join(b.text for b in body), count=1)
                found = Pair(_NUMBERING.sub("", p.text), answer, p, body[-1], "question_heading")
        elif _Q_MARK.match(p.text):
            found, nxt = _marked(passages, i)
        elif p.file.lower().endswith(".txt") and "\n" not in p.text and _is_question(p.text) \
                and i + 1 < len(passages) and not _is_question(passages[i + 1].text):
            found, nxt = Pair(_NUMBERING.sub("", p.text), passages[i + 1].text, p, passages[i + 1],
                              "question_line"), i + 2
        if found and found.question.strip() and found.answer.strip():
            pairs.append(found)
        i = max(nxt, i + 1)
    return pairs


def _body(passages: list[Passage], i: int, stop=None) -> tuple[list[Passage], int]:
    """The passages from ``i`` up to the next heading (or a passage ``stop`` matches)."""
    body = []
    while i < len(passages) and passages[i].kind not in ("heading", "table") \
            and not (stop and stop(passages[i].text)):
        body.append(passages[i])
        i += 1
    return body, i


def _marked(passages: list[Passage], i: int) -> tuple[Pair | None, int]:
    p = passages[i]
    text = _Q_MARK.sub("", p.text, count=1)
    inline = _A_INLINE.search(text)
    if inline:  # "Q: … A: …" in one paragraph
        more, nxt = _body(passages, i + 1, stop=lambda t: bool(_Q_MARK.match(t) or _A_MARK.match(t)))
        answer = "\n".join([text[inline.end():]] + [m.text for m in more])
        return Pair(text[:inline.start()].strip(), answer, p, more[-1] if more else p, "q_a_markers"), nxt
    if i + 1 < len(passages) and _A_MARK.match(passages[i + 1].text):
        more, nxt = _body(passages, i + 2, stop=lambda t: bool(_Q_MARK.match(t) or _A_MARK.match(t)))
        answer = "\n".join([_A_MARK.sub("", passages[i + 1].text, count=1)] + [m.text for m in more])
        return Pair(text.strip(), answer, p, more[-1] if more else passages[i + 1], "q_a_markers"), nxt
    return None, i + 1


def _qa_headings(passages: list[Passage], i: int) -> tuple[Pair | None, int]:
    question, j = _body(passages, i + 1)
    if not question or j >= len(passages) or not _A_HEADING.match(passages[j].text):
        return None, i + 1
    answer, nxt = _body(passages, j + 1)
    if not answer:
        return None, j
    return Pair("\n".join(q.text for q in question), "\n".join(a.text for a in answer), question[0], answer[-1],
                "qa_headings"), nxt


def _table_pairs(p: Passage) -> list[Pair]:
    if len(p.cells) < 2:
        return []
    header = p.cells[0]
    q = next((k for k, c in enumerate(header) if _Q_COLUMN.match(c)), None)
    a = next((k for k, c in enumerate(header) if _A_COLUMN.match(c)), None)
    if q is None or a is None or q == a:
        return []
    return [Pair(_NUMBERING.sub("", row[q]), row[a], p, p, "table") for row in p.cells[1:]
            if len(row) > max(q, a) and row[q].strip() and row[a].strip()]
