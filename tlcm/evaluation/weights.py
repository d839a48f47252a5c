"""Which files scored a result: the sha256 of every weight and config file a run read.

A number is only comparable when it names exactly what made it (docs/eval.md §1), and the hashes double as
the run identity that resume checks, so images of other weights are never mixed into one score.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

HASHED_SUFFIXES = (".safetensors", ".json", ".txt", ".pt", ".pth", ".bin")
CHUNK = 16 * 1024 * 1024


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(path: str | Path, missing_hint: str) -> dict[str, str]:
    """``{name: sha256}`` of a file, or of every weight/config file under a folder (relative names, sorted).

    A missing path is a ``FileNotFoundError`` naming it and ``missing_hint`` (where to get it).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {missing_hint}")
    if path.is_file():
        return {path.name: file_sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in HASHED_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise FileNotFoundError(f"{path} holds no weight or config files: {missing_hint}")
    return {p.relative_to(path).as_posix(): file_sha256(p) for p in files}
