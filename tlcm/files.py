"""Atomic file writes: a reader (or a crash) never sees a half-written file, and a user's file is never
clobbered unless the caller asked for it.

Every writer of the project (LoRA files, configs, checkpoints, images, reports) goes through here. The data
is written to a temporary file in the destination folder, flushed to disk, given the mode a plain ``open``
would give it (``0o666`` less the umask: ``mkstemp`` would leave ``0o600``), then renamed over the target.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, *, overwrite: bool) -> Path:
    """``path`` as a Path; ``FileExistsError`` naming it if it exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --force / overwrite=True to replace it)")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], *, overwrite: bool = True) -> Path:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary sibling, which then replaces ``path``."""
    path = check_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if not overwrite and path.exists():       # created by someone else while we wrote
            raise FileExistsError(f"{path} appeared while it was being written; refusing to overwrite it")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def atomic_save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                            metadata: Mapping[str, str] | None = None, *, overwrite: bool = True) -> Path:
    """``safetensors.torch.save_file`` through a temporary file (tensors made contiguous first)."""
    from safetensors.torch import save_file
    state = {key: value.contiguous() for key, value in tensors.items()}
    meta = dict(metadata) if metadata is not None else None
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta), overwrite=overwrite)
