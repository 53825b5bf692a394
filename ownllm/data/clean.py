"""Cleaning that does not damage chat data, optional PII masking, and the guide's ``clean_text``."""
from __future__ import annotations

import html
import re
import unicodedata

# Full-width CJK punctuation is kept as written: NFKC would turn "，" into "," and "？" into "?",
# which changes the style a Chinese model learns to answer in.
_KEEP_FULLWIDTH = re.compile(r"([\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u3000])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060\ufeff]")
_HTML_TAG = re.compile(
    r"</?(?:p|br|div|span|b|i|u|em|strong|a|img|ul|ol|li|table|tr|td|th|tbody|thead|h[1-6]|font|hr|"
    r"sup|sub|small|center|section|article|header|footer|nav|blockquote)(?:\s[^<>]*)?/?>", re.I)
_BLOCK_TAG = re.compile(r"<(?:br|/p|/div|/li|/tr|/h[1-6])\s*/?>", re.I)
_ENTITY = re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{2,6}|#x[0-9a-fA-F]{2,5});")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


NORMALIZATIONS = ("nfc", "nfkc")


def normalize(text: str, form: str = "nfkc") -> str:
    """NFC, or NFKC (full-width letters/digits → ASCII) keeping CJK full-width punctuation as written."""
    if form == "nfc":
        return unicodedata.normalize("NFC", text)
    parts = _KEEP_FULLWIDTH.split(text)
    return "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))


def clean(text: str, normalization: str = "nfc", strip_html: bool = False, changed: set | None = None) -> str:
    """Safe by default: NFC, control and zero-width characters, line endings, trailing spaces and runs
    of blank lines. Code indentation, single newlines and all punctuation are kept.

    ``normalization="nfkc"`` also folds compatibility characters ("１０ｍ" → "10m", but also "m²" → "m2",
    "①" → "1"); ``strip_html`` removes common HTML tags and decodes entities (it would also delete a
    literal "<table>" in a question about HTML). Both change meaning, so both are options. ``changed``
    collects the names of the optional steps that changed something.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if strip_html:
        before = text
        if "<" in text:
            text = _BLOCK_TAG.sub("\n", text)
            text = _HTML_TAG.sub("", text)
        if "&" in text and _ENTITY.search(text):
            text = html.unescape(text)
        if changed is not None and text != before:
            changed.add("html")
    normalized = normalize(text, normalization)
    if changed is not None and normalization != "nfc" and normalized != unicodedata.normalize("NFC", text):
        changed.add(normalization)
    text = _TRAILING_WS.sub("\n", normalized)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def clean_text(text: str) -> str:
    """The guide's cleaner: lowercase and strip all punctuation. LOSSY — never used by default.

    It destroys punctuation that a chat model should learn to write; use ``clean`` instead.
    """
    return re.sub(r"[^\w\s]", "", text.lower())


# -- PII masking ----------------------------------------------------------------------------
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_CN_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){15,18}\d(?!\d)")
_CN_MOBILE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)")
_PHONE = re.compile(r"(?<![\w])\+?\d{1,3}[- .]?\(?\d{2,4}\)?[- .]\d{3,4}[- .]\d{3,4}(?!\d)")
_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def _valid_cn_id(s: str) -> bool:
    """GB 11643 check digit of a resident identity number."""
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == s[17].upper()


def _luhn(digits: str) -> bool:
    total, double = 0, False
    for c in reversed(digits):
        d = int(c) * (2 if double else 1)
        total += d - 9 if d > 9 else d
        double = not double
    return total % 10 == 0


def mask_pii(text: str) -> tuple[str, int]:
    """Mask e-mails, Chinese ID numbers, bank cards and phone numbers; return (text, count)."""
    count = 0

    def sub(pattern, label, check=None):
        nonlocal text, count

        def repl(m):
            nonlocal count
            raw = m.group(0)
            if check and not check(re.sub(r"\D", "", raw) if label == "[CARD]" else raw):
                return raw
            count += 1
            return label
        text = pattern.sub(repl, text)

    sub(_EMAIL, "[EMAIL]")
    sub(_CN_ID, "[ID]", _valid_cn_id)
    sub(_CARD, "[CARD]", _luhn)
    sub(_CN_MOBILE, "[PHONE]")
    sub(_PHONE, "[PHONE]")
    return text, count


def clean_row(row: dict, pii: str = "keep", normalization: str = "nfc", strip_html: bool = False,
              changed: set | None = None) -> tuple[dict, int]:
    """Clean every text of a canonical row; returns (row, PII items masked). ``changed`` collects the
    optional steps ("nfkc", "html") that changed the row."""
    masked = 0

    def fix(t: str) -> str:
        nonlocal masked
        t = clean(t, normalization, strip_html, changed)
        if pii == "mask":
            t, n = mask_pii(t)
            masked += n
        return t

    if "text" in row:
        return {"text": fix(row["text"])}, masked
    out = {"messages": [{"role": m["role"], "content": fix(m["content"])} for m in row["messages"]]}
    if isinstance(row.get("rejected"), str):  # preference rows (data.preference) keep their judgement
        out["rejected"] = fix(row["rejected"])
    if "label" in row:
        out["label"] = row["label"]
    return out, masked
