"""Checkpoints for exact resume (student LoRA, optimizer, LR scheduler, every RNG, step, prompt position),
stored without pickle and verified on resume; and the output folder as the property of one run.

Layout of ``<output>/checkpoints/checkpoint-<step>/``:

- ``student.safetensors``: the student LoRA (fp32);
- ``trainer.json`` + ``trainer.safetensors``: step, config digest, LR scheduler, optimizer and the
  techniques' adapters/heads/optimizers (identical on every rank, written by rank 0);
- ``rank<r>.json`` + ``rank<r>.safetensors`` per process: training generator, python/numpy/torch/cuda
  RNG, prompt position;
- ``manifest.json``, written last: size and sha256 of every other file.

Tensors go to safetensors and everything else to JSON (:func:`flatten_state`), so resuming a checkpoint
someone else shared never runs an unpickler, which could execute arbitrary code. Every file is written
atomically (``tlcm.files``) into ``checkpoint-<step>.tmp``, renamed when complete. Resume verifies the
manifest; ``latest`` skips damaged checkpoints with a warning. Multi-node runs need the output folder on
a shared filesystem.

One output folder holds one run: :func:`claim_output` keeps ``.tlcm-train.lock`` (pid and host) while it
runs, and refuses to start a fresh run over an earlier run's outputs unless told to replace them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tlcm.files import atomic_save_safetensors, atomic_write_text

from .export import EXPORT_NAMES

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"                 # the output folder's subfolder of checkpoint-<step> folders
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
FORMAT = "tlcm-train-checkpoint/1"
REQUIRED = ("student.safetensors", "trainer.json", "trainer.safetensors", "rank0.json", "rank0.safetensors")
TENSOR, TUPLE, DICT = "__tensor__", "__tuple__", "__dict__"
JSON_SCALARS = (type(None), bool, int, float, str)

LOCK_NAME = ".tlcm-train.lock"
RUN_OUTPUTS = ("config.yaml", "status.json", f"{CHECKPOINTS}/checkpoint-*", "samples/step-*.png", "logs/metrics.jsonl",
               "logs/tensorboard", *(f"lora/{name}" for name in EXPORT_NAMES.values()))
"""What a run writes into its output folder (globs): all that ``--overwrite`` removes, so other files stay."""


class RunFolderError(RuntimeError):
    """The output folder, or a checkpoint in it, cannot be used; the one-line message says why and what to do."""


class CheckpointError(RunFolderError):
    """A checkpoint is missing, damaged, in an unsafe format, or does not fit the run."""


@dataclass
class ResumeState:
    """What a checkpoint restores besides the tensors loaded in place."""

    step: int
    prompt_position: int
    config_digest: str
    techniques: dict[str, Any]       # saved technique states by name (see train/technique.py)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


# -- nested state <-> (JSON skeleton, tensors) ------------------------------------------------------------

def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts with str/int keys, lists, tuples, tensors, JSON scalars) into a JSON
    skeleton with ``{"__tensor__": name}`` placeholders and the ``{name: tensor}`` they point to.

    JSON alone would turn tuples into lists (torch wants Adam's ``betas`` as a tuple, ``random.setstate``
    a tuple) and int keys into strings (``optimizer.state_dict()["state"]``), so those are tagged
    (``__tuple__``, ``__dict__``) for :func:`unflatten_state` to restore exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            if path in tensors:
                raise ValueError(f"two tensors of the state would be stored as {path!r}")
            tensors[path] = value
            return {TENSOR: path}
        if isinstance(value, tuple):
            return {TUPLE: [walk(v, _join(path, i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, _join(path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v, _join(path, k)) for k, v in value.items()}
            if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
                raise TypeError(f"state keys at {path or '/'} must be str or int, not {sorted(map(repr, value))[:3]}")
            return {DICT: [[k, walk(v, _join(path, k))] for k, v in value.items()]}
        if isinstance(value, JSON_SCALARS):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} (at {path or '/'}) in a checkpoint: tensors, numbers, "
                        "strings, None, lists, tuples and dicts only")

    return walk(state, ""), tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The state :func:`flatten_state` split into ``skeleton`` and ``tensors``."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if skeleton.keys() == {TENSOR}:
        return tensors[skeleton[TENSOR]]
    if skeleton.keys() == {TUPLE}:
        return tuple(unflatten_state(v, tensors) for v in skeleton[TUPLE])
    if skeleton.keys() == {DICT}:
        return {k: unflatten_state(v, tensors) for k, v in skeleton[DICT]}
    return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}


def save_state(folder: Path, name: str, state: Any) -> None:
    """``state`` as ``<name>.safetensors`` (its tensors) and ``<name>.json`` (the rest), each written atomically."""
    skeleton, tensors = flatten_state(state)
    atomic_save_safetensors(folder / f"{name}.safetensors", {k: v.detach().cpu() for k, v in tensors.items()})
    atomic_write_text(folder / f"{name}.json", json.dumps(skeleton))


def load_state(folder: Path, name: str) -> Any:
    """What :func:`save_state` wrote; ``CheckpointError`` if the two files are unreadable or do not match."""
    try:
        skeleton = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        return unflatten_state(skeleton, load_file(str(folder / f"{name}.safetensors")))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise CheckpointError(f"{folder}: {name}.json/.safetensors are unreadable ({_first_line(err)})") from err


# -- RNG states -----------------------------------------------------------------------------------------------

def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the run draws from; numpy's uint32 key becomes an int64 tensor (safetensors, exact)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"generator": generator.get_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- manifest ---------------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, step: int) -> None:
    """List every file of ``folder`` with its size and sha256 in ``manifest.json`` (write it last)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    atomic_write_text(folder / MANIFEST, json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))


def _manifest_files(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's file entries; ``CheckpointError`` for a missing, old-format or malformed manifest."""
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist or is not a folder")
    if not (path / MANIFEST).is_file():
        if (path / "trainer.pt").exists() or any(path.glob("rank*.pt")):
            raise CheckpointError(f"{path} is a pickle-based checkpoint from an older version of tlcm-train; it is not "
                                  "loaded for safety (unpickling a file can run arbitrary code): start a new run "
                                  "(--overwrite) or resume from a checkpoint written by this version")
        raise CheckpointError(f"{path} has no {MANIFEST}: it is incomplete or not a tlcm-train checkpoint")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest["format"] != FORMAT or not all(
                isinstance(e["bytes"], int) and isinstance(e["sha256"], str) for e in files.values()):
            raise ValueError(f"not a {FORMAT} manifest")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: {MANIFEST} is unreadable ({_first_line(err)})") from err
    odd = [name for name in files if Path(name).name != name or name in ("", ".", "..", MANIFEST)]
    missing = [name for name in REQUIRED if name not in files]
    if odd or missing:
        raise CheckpointError(f"{path}: {MANIFEST} lists invalid names {odd[:3]} or lacks {missing}")
    return files


def verify_checkpoint(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries once every file it lists is there, complete and unchanged; ``CheckpointError``
    saying what is wrong otherwise."""
    files = _manifest_files(path)
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: {name} is truncated or changed ({size} bytes, the manifest says "
                                  f"{entry['bytes']})")
        if _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its sha256 in the manifest (damaged or changed)")
    return files


# -- save / find / load ---------------------------------------------------------------------------------------

def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint folders under ``root`` (complete or not: see :func:`verify_checkpoint`), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """The verified checkpoint to resume: ``None``/"" -> none; ``latest`` -> the newest intact one under
    ``root`` (None if there is none at all), skipping damaged ones with a warning; else that folder.
    ``CheckpointError`` when that folder, or every checkpoint under ``root``, is unusable."""
    if not resume:
        return None
    if resume != "latest":
        path = Path(resume).expanduser()
        verify_checkpoint(path)
        return path
    for half in sorted(root.glob("checkpoint-*.tmp")):
        log.warning("ignoring %s: half-written (the run stopped while saving it)", half)
    found, problems = checkpoint_dirs(root), []
    for path in reversed(found):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as err:
            log.warning("skipping a damaged checkpoint: %s; trying the one before", err)
            problems.append(str(err))
    if found:
        raise CheckpointError(f"resume latest: no intact checkpoint in {root} ({'; '.join(problems)}); "
                              "start a new run with --overwrite, or resume a checkpoint folder you trust")
    log.info("no checkpoint to resume in %s: starting at step 0", root)
    return None


def save_checkpoint(root: Path, step: int, *, lora_state: dict[str, torch.Tensor], optimizer, scheduler,
                    generator: torch.Generator, prompt_position: int, config_digest: str, rank: int,
                    is_main: bool, barrier: Callable[[], None], keep: int,
                    techniques: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write checkpoint ``step`` from every rank; rank 0 adds the manifest, renames it into place and prunes
    to the newest ``keep``."""
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f"checkpoint-{step:08d}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    save_state(tmp, f"rank{rank}", {**_rng_state(generator), "prompt_position": prompt_position})
    if is_main:
        atomic_save_safetensors(tmp / "student.safetensors",
                                {k: v.detach().float().cpu() for k, v in lora_state.items()})
        save_state(tmp, "trainer", {"step": step, "config_digest": config_digest, "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "techniques": techniques or {}})
    barrier()
    if is_main:
        write_manifest(tmp, step)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, *, load_lora: Callable[[dict[str, torch.Tensor]], None], optimizer, scheduler,
                    generator: torch.Generator, rank: int) -> ResumeState:
    """Verify checkpoint ``path`` and restore everything ``save_checkpoint`` wrote for this rank; returns step,
    prompt position, digest and technique states. Reads JSON and safetensors only."""
    files = verify_checkpoint(path)
    if f"rank{rank}.json" not in files:
        raise CheckpointError(f"{path} has no state for process {rank}: it was saved with fewer processes; resume "
                              "with the same number of processes")
    unlisted = sorted(p.name for p in path.iterdir() if p.name not in files and p.name != MANIFEST)
    if unlisted:
        log.warning("%s: ignoring %s (not in its manifest)", path, ", ".join(unlisted))
    trainer, rng = load_state(path, "trainer"), load_state(path, f"rank{rank}")
    try:
        load_lora(load_file(str(path / "student.safetensors")))
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        _set_rng_state(rng, generator)
        return ResumeState(int(trainer["step"]), int(rng["prompt_position"]), str(trainer["config_digest"]),
                           trainer["techniques"])
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{path} does not fit this run ({_first_line(err)})") from err


# -- the output folder: one run -----------------------------------------------------------------------------

def earlier_run_outputs(output_dir: Path) -> list[Path]:
    """What an earlier run wrote into ``output_dir`` (:data:`RUN_OUTPUTS`); other files are not listed."""
    return sorted({p for pattern in RUN_OUTPUTS for p in output_dir.glob(pattern)})


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
