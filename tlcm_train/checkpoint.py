"""Checkpoints for exact resume (student LoRA, optimizer, LR schedule, every RNG, step, prompt position),
verified before anything in them is used, so a damaged or altered checkpoint is refused with a reason.

Layout of ``<output>/checkpoints/checkpoint-<step>/``:

- ``student.safetensors``: the student LoRA (fp32);
- ``trainer.json`` + ``trainer.safetensors``: step, config digest, LR schedule, optimizer and the
  techniques' adapters/heads/optimizers (identical on every rank, written by rank 0);
- ``rank<r>.json`` + ``rank<r>.safetensors`` per process: training generator, python/numpy/torch/cuda
  RNG, prompt position;
- ``manifest.json``, written last: size and sha256 of every other file.

Every state is a pickle-free file pair (``tlcm_train.state_files``), so resuming a checkpoint someone else
shared never runs an unpickler. Every file is written atomically (``tlcm.files``) into
``checkpoint-<step>.tmp``, renamed when complete. Resume verifies the manifest; ``latest`` skips damaged
checkpoints with a warning. Multi-node runs need the output folder on a shared filesystem.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tlcm.errors import one_line
from tlcm.files import atomic_save_safetensors, atomic_write_text

from .run_folder import RunFolderError
from .state_files import load_state, save_state

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
FORMAT = "tlcm-train-checkpoint/1"
REQUIRED = ("student.safetensors", "trainer.json", "trainer.safetensors", "rank0.json", "rank0.safetensors")


class CheckpointError(RunFolderError):
    """A checkpoint is missing, damaged, in an unsafe format, or does not fit the run."""


@dataclass
class ResumeState:
    """What a checkpoint restores besides the tensors loaded in place."""

    step: int
    prompt_position: int
    config_digest: str
    techniques: dict[str, Any]       # saved technique states by name (see tlcm_train/technique.py)


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
        raise CheckpointError(f"{path}: {MANIFEST} is unreadable ({one_line(err)})") from err
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


def save_checkpoint(root: Path, step: int, *, lora_state: dict[str, torch.Tensor], optimizer, lr_schedule,
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
                                    "lr_schedule": lr_schedule.state_dict(), "techniques": techniques or {}})
    barrier()
    if is_main:
        write_manifest(tmp, step)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, *, load_lora: Callable[[dict[str, torch.Tensor]], None], optimizer, lr_schedule,
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
    try:
        trainer, rng = load_state(path, "trainer"), load_state(path, f"rank{rank}")
    except ValueError as err:                   # the state files: unreadable or not matching
        raise CheckpointError(str(err)) from err
    try:
        load_lora(load_file(str(path / "student.safetensors")))
        optimizer.load_state_dict(trainer["optimizer"])
        lr_schedule.load_state_dict(trainer["lr_schedule"])
        _set_rng_state(rng, generator)
        return ResumeState(int(trainer["step"]), int(rng["prompt_position"]), str(trainer["config_digest"]),
                           trainer["techniques"])
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{path} does not fit this run ({one_line(err)})") from err
