"""manifest.json: what was exported, from which run and config, file sizes and hashes, and each
check with its measured figure and whether it passed."""
from __future__ import annotations

import hashlib
import json
import os
import time


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(name: str, measured: float, tolerance: float, passed: bool | None = None) -> dict:
    ok = measured <= tolerance if passed is None else passed
    return {"name": name, "measured": measured, "tolerance": tolerance, "passed": bool(ok)}


def raise_if_failed(manifest: dict, fmt: str, out: str) -> None:
    """Stop an export whose checks failed; the caller's staging folder is then removed, so nothing is written."""
    from ownllm.errors import OwnLLMError

    if not manifest["all_checks_passed"]:
        failed = [c for c in manifest["checks"] if not c["passed"]]
        raise OwnLLMError(f"the {fmt} export failed its checks: {failed}", hint=f"nothing was written at {out}")


def write_manifest(folder: str, fmt: str, source: str, checks: list[dict], extra: dict | None = None) -> dict:
    from ownllm.utils import atomic_write

    config = os.path.join(source, "config.yaml")
    files = []
    for root, _, names in os.walk(folder):
        for n in sorted(names):
            if n == "manifest.json":
                continue
            p = os.path.join(root, n)
            files.append({"name": os.path.relpath(p, folder), "bytes": os.path.getsize(p), "sha256": sha256_file(p)})
    manifest = {"format": fmt, "source": os.path.abspath(source) if os.path.exists(source) else source,
                "config_sha256": sha256_file(config) if os.path.exists(config) else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files, "checks": checks,
                "all_checks_passed": all(c["passed"] for c in checks), **(extra or {})}
    atomic_write(os.path.join(folder, "manifest.json"), json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
