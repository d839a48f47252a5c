"""Checkpoints for exact resume: student LoRA, optimizer, LR scheduler, every RNG, step, prompt position.

Layout: ``<output>/checkpoints/checkpoint-<step>/`` with ``student.safetensors`` (fp32 LoRA),
``trainer.pt`` (optimizer, scheduler, step, config digest, the techniques' adapters/heads/optimizers;
identical on every rank, written by rank 0)
and ``rank<r>.pt`` per process (training generator, python/numpy/torch/cuda RNG, prompt position).
A checkpoint is written to ``checkpoint-<step>.tmp`` and renamed when complete, so a run killed while
saving never leaves a half checkpoint that "resume latest" would pick. Multi-node runs need the output
folder on a shared filesystem.
"""
from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class ResumeState:
    """What a checkpoint restores besides the tensors loaded in place."""

    step: int
    prompt_position: int
    config_digest: str
    techniques: dict[str, Any]       # saved technique states by name (see train/technique.py)


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """``None``/"" -> no resume; ``latest`` -> newest checkpoint (None if there is none); else a path."""
    if not resume:
        return None
    if resume == "latest":
        found = checkpoint_dirs(root)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / "trainer.pt").is_file():
        raise FileNotFoundError(f"resume: {path} is not a checkpoint folder (no trainer.pt); use 'latest' or a "
                                f"checkpoint-<step> folder under {root}")
    return path


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"generator": generator.get_state(), "python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, *, lora_state: dict[str, torch.Tensor], optimizer, scheduler,
                    generator: torch.Generator, prompt_position: int, config_digest: str, rank: int,
                    is_main: bool, barrier: Callable[[], None], keep: int,
                    techniques: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write checkpoint ``step`` from every rank; rank 0 renames it into place and prunes to ``keep``."""
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f"checkpoint-{step:08d}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save({**_rng_state(generator), "prompt_position": prompt_position}, tmp / f"rank{rank}.pt")
    if is_main:
        save_file({k: v.float().contiguous() for k, v in lora_state.items()}, str(tmp / "student.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "config_digest": config_digest, "techniques": techniques or {}}, tmp / "trainer.pt")
    barrier()
    if is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, *, load_lora: Callable[[dict[str, torch.Tensor]], None], optimizer, scheduler,
                    generator: torch.Generator, rank: int) -> ResumeState:
    """Restore everything ``save_checkpoint`` wrote for this rank; returns step, prompt position, digest."""
    rank_file = path / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{path} has no state for process {rank} ({rank_file.name}); it was saved with "
                                "fewer processes. Resume with the same number of processes.")
    load_lora(load_file(str(path / "student.safetensors")))
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    rng = torch.load(rank_file, map_location="cpu", weights_only=False)
    _set_rng_state(rng, generator)
    return ResumeState(int(trainer["step"]), int(rng["prompt_position"]), str(trainer["config_digest"]),
                       trainer.get("techniques", {}))
