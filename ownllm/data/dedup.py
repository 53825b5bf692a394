"""Exact and near-duplicate detection (MinHash LSH from datasketch), and the train/eval leakage check."""
from __future__ import annotations

import hashlib
import re
import zlib

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


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _hash32(b: bytes) -> int:
    return zlib.crc32(b)


class NearDuplicateIndex:
    """Rows whose character-shingle Jaccard similarity is about ``threshold`` or more."""

    def __init__(self, threshold: float = THRESHOLD, num_perm: int = NUM_PERM):
        from datasketch import MinHash, MinHashLSH

        self.num_perm, self.threshold = num_perm, threshold
        self.texts: dict = {}
        # (Buckets tuned lower than the threshold raise recall but flood templated data with
        # candidates: 100k rows went from 35 s to 13 min.)
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        # One set of permutations for every signature: datasketch draws new ones per MinHash otherwise.
        template = MinHash(num_perm=num_perm, seed=1)
        self._permutations, self._scheme = template.permutations, template.scheme

    def signature(self, text: str):
        from datasketch import MinHash

        # CRC-32: deterministic across processes (Python's hash() is salted per process, which made
        # results vary run to run) and an order of magnitude faster than datasketch's SHA-1.
        m = MinHash(num_perm=self.num_perm, permutations=self._permutations,
                    scheme=self._scheme, hashfunc=_hash32)
        m.update_batch(_shingles(text))
        return m

    def query(self, signature, text: str) -> list:
        """Indexed keys whose Jaccard similarity with ``text`` reaches the threshold.

        LSH buckets only propose candidates (a 64-permutation estimate is too noisy to decide
        alone); each candidate is confirmed with the exact Jaccard similarity of the shingles.
        """
        hits = self.lsh.query(signature)
        if not hits:
            return []
        mine = set(_shingles(text))
        return [k for k in hits if jaccard(mine, set(_shingles(self.texts[k]))) >= self.threshold]

    def add(self, key, signature, text: str) -> None:
        self.lsh.insert(key, signature)
        self.texts[key] = text


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
            hits = self.near.query(sig, text)
            if hits:
                return "near_duplicate", hits[0]
            self.near.add(key, sig, text)
        return None, None


def find_leaks(train_texts: list[str], eval_texts: list[str]) -> list[int]:
    """Indices of train rows that are exact or near duplicates of a validation/test row."""
    if not eval_texts:
        return []
    exact = {exact_key(t) for t in eval_texts}
    index = NearDuplicateIndex()
    for i, t in enumerate(eval_texts):
        index.add(i, index.signature(t), t)
    return [i for i, t in enumerate(train_texts)
            if exact_key(t) in exact or index.query(index.signature(t), t)]
