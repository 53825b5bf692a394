"""Exact and near-duplicate detection (MinHash LSH from datasketch), and the train/eval leakage check.

Rows are compared on what makes them distinct: their user turns and their assistant turns, each on
its own (or a text row's text). The system prompt is never compared: a long shared system prompt
made distinct rows look alike. Rows whose turns differ in a number or a name are never duplicates
("5 mg" vs "10 mg" inside shared boilerplate are different answers).
"""
from __future__ import annotations

import hashlib
import re
import zlib

_WS = re.compile(r"\s+")
NUM_PERM = 64
THRESHOLD = 0.9
# Numbers (also 1,000 / 2.5 / 10:30 and Chinese numerals) and capitalised words (names; a name can
# start a sentence, so every capitalised word counts: two rows that differ there are kept).
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*|[〇零一二两三四五六七八九十百千万亿]+")
_WORD = re.compile(r"[A-Z][\w'’-]*")
EXCERPT = 160
_PUNCT = re.compile(r"[^\w\s]+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def distinct_parts(row: dict) -> tuple[str, ...]:
    """The parts of a canonical row that duplicates are judged on: (user turns, assistant turns), or (text,);
    a preference row adds its rejected answer or its label (a good and a bad label on one answer differ)."""
    if "text" in row:
        return (row["text"],)
    asked = "\n".join(m["content"] for m in row["messages"] if m["role"] in ("user", "tool"))
    answered = "\n".join(m["content"] for m in row["messages"] if m["role"] == "assistant")
    if "rejected" in row:
        return asked, answered, "rejected: " + row["rejected"]
    if "label" in row:
        return asked, answered, "label: " + ("good" if row["label"] else "bad")
    return asked, answered


def markers(text: str) -> tuple[str, ...]:
    """The numbers and names of a text, in order: two texts that differ here say different things."""
    found = [m.group(0) for m in _NUMBER.finditer(text)]
    found += [m.group(0) for m in _WORD.finditer(text)]
    return tuple(found)


def exact_key(parts: tuple[str, ...]) -> str:
    return hashlib.blake2b("\x1f".join(_norm(p) for p in parts).encode("utf-8"), digest_size=16).hexdigest()


def excerpt(parts: tuple[str, ...], limit: int = EXCERPT) -> str:
    text = " ⟩ ".join(_WS.sub(" ", p).strip() for p in parts)
    return text if len(text) <= limit else text[:limit] + "…"


def _shingles(text: str, k: int = 5) -> set[bytes]:
    # Character shingles of the text without punctuation: they work for Chinese (no spaces) as well
    # as for English. (Numbers and names are compared apart, by markers().)
    t = _norm(_PUNCT.sub(" ", text))
    if len(t) <= k:
        return {t.encode("utf-8")}
    return {t[i:i + k].encode("utf-8") for i in range(len(t) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _hash32(b: bytes) -> int:
    return zlib.crc32(b)


class NearDuplicateIndex:
    """Rows each of whose parts has a character-shingle Jaccard similarity of ``threshold`` or more
    with the same part of an indexed row, with the same numbers and names."""

    def __init__(self, threshold: float = THRESHOLD, num_perm: int = NUM_PERM):
        from datasketch import MinHash, MinHashLSH

        self.num_perm, self.threshold = num_perm, threshold
        self.parts: dict = {}
        # (Buckets tuned lower than the threshold raise recall but flood templated data with
        # candidates: 100k rows went from 35 s to 13 min.)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        # One set of permutations for every signature: datasketch draws new ones per MinHash otherwise.
        template = MinHash(num_perm=num_perm, seed=1)
        self._permutations, self._scheme = template.permutations, template.scheme

    def signature(self, shingles: list[set[bytes]]):
        """The MinHash of a row from its parts' shingles (see :func:`shingled`)."""
        from datasketch import MinHash

        # CRC-32: deterministic across processes (Python's hash() is salted per process, which made
        # results vary run to run) and an order of magnitude faster than datasketch's SHA-1.
        m = MinHash(num_perm=self.num_perm, permutations=self._permutations,
                    scheme=self._scheme, hashfunc=_hash32)
        # The buckets see all parts' shingles together; each candidate is then confirmed part by part.
        m.update_batch(list(set().union(*shingles)))
        return m

    def query(self, signature, parts: tuple[str, ...], shingles: list[set[bytes]]) -> list:
        """Indexed keys that are near-duplicates of ``parts``.

        LSH buckets only propose candidates (a 64-permutation estimate is too noisy to decide
        alone); each is confirmed with the exact Jaccard similarity of every part and its markers.
        """
        hits = self.lsh.query(signature)
        if not hits:
            return []
        mine = [(sh, markers(p)) for sh, p in zip(shingles, parts)]
        return [k for k in hits if self._same(mine, self.parts[k])]

    def _same(self, mine, theirs: tuple[str, ...]) -> bool:
        return len(mine) == len(theirs) and all(
            marks == markers(p) and jaccard(sh, _shingles(p)) >= self.threshold for (sh, marks), p in zip(mine, theirs))

    def add(self, key, signature, parts: tuple[str, ...]) -> None:
        self.lsh.insert(key, signature)
        self.parts[key] = parts


class Deduplicator:
    """Feed canonical rows in order; ``check(row, key)`` returns (None, None), or ('duplicate' |
    'near_duplicate', the key of the earlier row); ``excerpt_of(key)`` shows a kept row."""

    def __init__(self, mode: str = "near"):
        self.mode = mode
        self.exact: dict[str, object] = {}
        self.kept: dict[object, tuple[str, ...]] = {}
        self.near = NearDuplicateIndex() if mode == "near" else None

    def check(self, row: dict, key) -> tuple[str | None, object]:
        if self.mode == "off":
            return None, None
        parts = distinct_parts(row)
        h = exact_key(parts)
        if h in self.exact:
            return "duplicate", self.exact[h]
        if self.near is not None:
            shingles = [_shingles(p) for p in parts]
            sig = self.near.signature(shingles)
            hits = self.near.query(sig, parts, shingles)
            if hits:
                return "near_duplicate", hits[0]
            self.near.add(key, sig, parts)
        self.exact[h] = key
        self.kept[key] = parts  # the row's own strings: the excerpt is made only for a duplicate's report
        return None, None

    def excerpt_of(self, key) -> str:
        return excerpt(self.kept[key]) if key in self.kept else ""


def find_leaks(train_rows: list[dict], eval_rows: list[dict]) -> list[tuple[int, int]]:
    """(train index, eval index) of train rows that are exact or near duplicates of a validation/test row."""
    if not eval_rows:
        return []
    exact = {}
    index = NearDuplicateIndex()
    for i, row in enumerate(eval_rows):
        parts = distinct_parts(row)
        exact.setdefault(exact_key(parts), i)
        index.add(i, index.signature([_shingles(p) for p in parts]), parts)
    leaks = []
    for i, row in enumerate(train_rows):
        parts = distinct_parts(row)
        hit = exact.get(exact_key(parts))
        if hit is None:
            shingles = [_shingles(p) for p in parts]
            near = index.query(index.signature(shingles), parts, shingles)
            hit = near[0] if near else None
        if hit is not None:
            leaks.append((i, hit))
    return leaks
