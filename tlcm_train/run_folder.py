"""The output folder as the property of one run.

Two runs writing into one folder would interleave their checkpoints, LoRA files and logs, and a fresh run
would silently mix with or replace an earlier run's results. So :func:`claim_output` keeps
``.tlcm-train.lock`` (pid and host) while a run uses the folder, and refuses to start a fresh run over an
earlier run's outputs unless told to replace them.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .export import EXPORT_NAMES

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"                 # the output folder's subfolder of checkpoint-<step> folders
LOCK_NAME = ".tlcm-train.lock"
RUN_OUTPUTS = ("config.yaml", "status.json", f"{CHECKPOINTS}/checkpoint-*", "samples/step-*.png", "logs/metrics.jsonl",
               "logs/tensorboard", *(f"lora/{name}" for name in EXPORT_NAMES.values()))
"""What a run writes into its output folder (globs): all that ``--overwrite`` removes, so other files stay."""


class RunFolderError(RuntimeError):
    """The output folder, or a checkpoint in it, cannot be used; the one-line message says why and what to do."""


def earlier_run_outputs(output_dir: Path) -> list[Path]:
    """What an earlier run wrote into ``output_dir`` (:data:`RUN_OUTPUTS`); other files are not listed."""
    return sorted({p for pattern in RUN_OUTPUTS for p in output_dir.glob(pattern)})


# -- the lock: pid and host of the run that owns the folder -------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # alive, another user's
        return True
    return True


def _create_lock(lock: Path) -> bool:
    """Create ``lock`` holding this process's pid and host; False if it exists (O_EXCL: one winner)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
    return True


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    """(pid, host) of the lock's owner; None if the lock is gone, empty (being created) or unreadable."""
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        pid, host = owner["pid"], owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, host) if isinstance(pid, int) and pid > 0 and isinstance(host, str) else None


def _take_lock(lock: Path) -> None:
    """Own ``lock``, taking over one left by a dead process on this host; ``RunFolderError`` if it is held."""
    if _create_lock(lock):
        return
    owner = _lock_owner(lock)
    if owner is None:
        raise RunFolderError(f"{lock.parent} is locked by another tlcm-train run ({lock} is unreadable); delete that "
                             "file if no run is using the folder")
    pid, host = owner
    if host != socket.gethostname() or _pid_alive(pid):
        raise RunFolderError(f"{lock.parent} is in use by another tlcm-train run (PID {pid} on {host}); wait for it "
                             f"to end or choose another output folder (if that run is gone, delete {lock})")
    log.warning("taking over the lock of a run that is gone (PID %d on %s): %s", pid, host, lock)
    lock.unlink(missing_ok=True)
    if not _create_lock(lock):
        raise RunFolderError(f"{lock.parent} was just taken by another tlcm-train run; choose another output folder")


def _release_lock(lock: Path) -> None:
    if _lock_owner(lock) == (os.getpid(), socket.gethostname()):
        lock.unlink(missing_ok=True)


# -- claiming the folder ---------------------------------------------------------------------------------------

def _start_fresh(output_dir: Path, overwrite: bool) -> None:
    """Refuse an earlier run's outputs, or remove them (only them) when ``overwrite``."""
    earlier = earlier_run_outputs(output_dir)
    if not earlier:
        return
    names = ", ".join(sorted({p.relative_to(output_dir).parts[0] for p in earlier}))
    if not overwrite:
        raise RunFolderError(f"{output_dir} holds an earlier run ({names}); continue it with --resume latest, or "
                             "replace its outputs with --overwrite")
    log.warning("--overwrite: removing the earlier run's outputs in %s (%s)", output_dir, names)
    for path in earlier:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Inside, SIGTERM raises ``SystemExit`` so that ``finally`` blocks run (only the main thread gets signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)     # None: set outside Python


@contextmanager
def claim_output(output_dir: Path, *, fresh: bool, overwrite: bool) -> Iterator[None]:
    """Own ``output_dir`` for one run (call it in the main process only): take its lock, and for a ``fresh``
    start refuse an earlier run's outputs unless ``overwrite`` removes them. ``RunFolderError`` when the
    folder is not ours to use. Meanwhile SIGTERM raises ``SystemExit`` (the trainer's own handler still
    stops cleanly first), so the lock goes on every exit but SIGKILL, whose stale lock a later run takes over."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_NAME
    _take_lock(lock)
    try:
        with _sigterm_exits():
            if fresh:
                _start_fresh(output_dir, overwrite)
            yield
    finally:
        _release_lock(lock)
