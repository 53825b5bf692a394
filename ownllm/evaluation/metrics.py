"""Answer-quality metrics: exact match, contains, token F1, ROUGE-L, BLEU, multiple-choice accuracy.

Text is normalised (NFKC full/half width, case, punctuation, spaces). CJK text is compared
character by character, other text word by word. BLEU comes from sacrebleu (its 'zh' tokenizer
for Chinese); ROUGE-L is a plain LCS because rouge-score does not segment CJK text.
"""
from __future__ import annotations

import re
import unicodedata

from ownllm.utils import is_cjk

_SPACE = re.compile(r"\s+")
_LATIN_WORD = r"[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]"  # a word character, not CJK


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return _SPACE.sub(" ", text).strip()


def tokens(text: str) -> list[str]:
    """Words, with every CJK character a token of its own."""
    norm = normalize(text)
    out = []
    for word in norm.split():
        if is_cjk(word):
            out.extend(c for c in word)
        else:
            out.append(word)
    return out


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


_NUMBER = re.compile(rf"(?<![.]|{_LATIN_WORD})-?\d+(?:[.,]\d+)?(?!{_LATIN_WORD})")  # 年费是98元 holds 98
_NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}


def _numbers(text: str) -> set[float]:
    text = unicodedata.normalize("NFKC", text or "")
    found = {float(n.replace(",", ".")) for n in _NUMBER.findall(text)}
    return found | {float(v) for k, v in _NUMBER_WORDS.items() if re.search(rf"\b{k}\b", text.lower())}


def contains(pred: str, ref: str) -> float:
    """Whether the answer holds the reference: as whole words in Latin script ("no" is not in "I do not
    know"), as a character span in Chinese/Japanese/Korean, as a number when the reference is one ("4" is
    not in "45 days"; "seven" is 7). For a one-letter choice (A–D), an answer that names several choices
    is wrong ("A, B, C or D" does not contain "B")."""
    r, p = normalize(ref), normalize(pred)
    if not r:
        return 0.0
    if is_multiple_choice([ref]):
        named = set(re.findall(r"(?<![A-Za-z])([A-D])(?![A-Za-z])", unicodedata.normalize("NFKC", pred or "")))
        return float(parse_choice(pred) == parse_choice(ref) and len(named) <= 1)
    if _NUMBER.fullmatch(unicodedata.normalize("NFKC", ref).strip()):
        return float(next(iter(_numbers(ref))) in _numbers(pred))
    if is_cjk(r):
        return float(r in p)
    # a Latin word ends at a non-word character or at a Chinese one ("热线是400 820 1177" holds "400-820-1177")
    return float(re.search(rf"(?<!{_LATIN_WORD}){re.escape(r)}(?!{_LATIN_WORD})", p) is not None)


def token_f1(pred: str, ref: str) -> float:
    from collections import Counter

    p, r = tokens(pred), tokens(ref)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list, b: list) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    p, r = tokens(pred), tokens(ref)
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu; Chinese references use its 'zh' tokenizer."""
    import sacrebleu

    tok = "zh" if any(is_cjk(r) for r in refs) else "13a"
    return round(sacrebleu.corpus_bleu(preds, [refs], tokenize=tok).score, 2)


def sentence_bleu(pred: str, ref: str) -> float:
    import sacrebleu

    return round(sacrebleu.sentence_bleu(pred, [ref], tokenize="zh" if is_cjk(ref) else "13a").score, 2)


_CHOICE = re.compile(r"(?:^|[^A-Za-z])([A-D])(?:[^A-Za-z]|$)")
_CHOICE_LEAD = re.compile(r"^\s*(?:answer|答案|选项|option)?\s*[:：是为]?\s*[\(（]?([A-D])[\)）\.．、:：]?(?:\s|$)", re.I)


def parse_choice(text: str) -> str | None:
    """The A/B/C/D an answer picks: a leading letter ('B.', '(C)', '答案：D') or the first lone one."""
    text = unicodedata.normalize("NFKC", text or "")
    m = _CHOICE_LEAD.match(text)
    if m:
        return m.group(1).upper()
    m = _CHOICE.search(text)
    return m.group(1) if m else None


def is_multiple_choice(refs: list[str]) -> bool:
    return bool(refs) and all(parse_choice(r) is not None and len(normalize(r)) <= 3 for r in refs)


def score(pred: str, ref: str) -> dict:
    return {"exact_match": exact_match(pred, ref), "contains": contains(pred, ref),
            "token_f1": round(token_f1(pred, ref), 4), "rouge_l": round(rouge_l(pred, ref), 4)}


def aggregate(preds: list[str], refs: list[str]) -> dict:
    per = [score(p, r) for p, r in zip(preds, refs)]
    n = max(len(per), 1)
    out = {k: round(sum(s[k] for s in per) / n, 4) for k in ("exact_match", "contains", "token_f1", "rouge_l")}
    out["bleu"] = bleu(preds, refs) if preds else 0.0
    if is_multiple_choice(refs):
        out["choice_accuracy"] = round(sum(parse_choice(p) == parse_choice(r) for p, r in zip(preds, refs)) / n, 4)
    return out
