"""Exact and near-duplicate detection (MinHash LSH from datasketch), and the train/eval leakage check."""
from __future__ import annotations

import hashlib
import re

_WS = re.compile(r"\s+")
NUM_PERM = 64
THRESHOLD = 0.9


def _norm(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def exact_key(text: str) -> str:
    return hashlib.blake2b(_norm(text).encode("utf-8"), digest_size=16).hexdigest()


def _shingles(text: str, k: int = 5) -> list[bytes]:
    # Character shingles: they work for Chinese (no spaces) as well as for English.
    t = _norm(text)
    if len(t) <= k:
        return [t.encode("utf-8")]
    return list({t[i:i + k].encode("utf-8") for i in range(len(t) - k + 1)})


class NearDuplicateIndex:
    """Rows whose character-shingle Jaccard similarity is about ``threshold`` or more."""

    def __init__(self, threshold: float = THRESHOLD, num_perm: int = NUM_PERM):
        from datasketch import MinHashLSH

        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def signature(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch(_shingles(text))
        return m

    def query(self, signature) -> list:
        return self.lsh.query(signature)

    def add(self, key, signature) -> None:
        self.lsh.insert(key, signature)


class Deduplicator:
    """Feed rows in order; ``seen(text)`` returns None, 'duplicate' or 'near_duplicate' (+ the first key)."""

    def __init__(self, mode: str = "near"):
        self.mode = mode
        self.exact: dict[str, object] = {}
        self.near = NearDuplicateIndex() if mode == "near" else None

    def check(self, text: str, key) -> tuple[str | None, object]:
        if self.mode == "off":
            return None, None
        h = exact_key(text)
        if h in self.exact:
            return "duplicate", self.exact[h]
        self.exact[h] = key
        if self.near is not None:
            sig = self.near.signature(text)
            hits = self.near.query(sig)
            if hits:
                return "near_duplicate", hits[0]
            self.near.add(key, sig)
        return None, None


def find_leaks(train_texts: list[str], eval_texts: list[str]) -> list[int]:
    """Indices of train rows that are exact or near duplicates of a validation/test row."""
    if not eval_texts:
        return []
    exact = {exact_key(t) for t in eval_texts}
    index = NearDuplicateIndex()
    for i, t in enumerate(eval_texts):
        index.add(i, index.signature(t))
    return [i for i, t in enumerate(train_texts)
            if exact_key(t) in exact or index.query(index.signature(t))]
