"""Write the tiny SDXL kit to disk in both formats users have: a diffusers folder and one SGM single file.

Loaders, hosts (ComfyUI, A1111) and CLIs are then exercised on real files, offline, in seconds. The
single file gets a ``<name>.config/`` folder (configs and tokenizers, no weights) beside it, because its
sizes are not SDXL base's and ``from_single_file`` needs matching configs. A manifest written last makes
builds idempotent: same seed and complete files → nothing is rebuilt.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .single_file import save_sdxl_single_file
from .tiny import tiny_sdxl_pipeline

KIT_FORMAT = 1
MANIFEST = "manifest.json"
CHECKPOINT = "tiny_sdxl.safetensors"


@dataclass(frozen=True)
class TinyKitPaths:
    """Where ``build_tiny_sdxl`` put the kit."""
    root: Path
    diffusers: Path     # save_pretrained folder (safetensors)
    checkpoint: Path    # SGM single-file .safetensors
    config: Path        # <checkpoint>.config: configs + tokenizers for the single file

    @classmethod
    def under(cls, root: str | Path) -> "TinyKitPaths":
        root = Path(root)
        checkpoint = root / CHECKPOINT
        return cls(root, root / "diffusers", checkpoint, checkpoint.with_suffix(".config"))


def _manifest(seed: int) -> dict:
    return {"format": KIT_FORMAT, "seed": seed}


def _is_built(paths: TinyKitPaths, seed: int) -> bool:
    try:
        manifest = json.loads((paths.root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (manifest == _manifest(seed) and paths.checkpoint.is_file()
            and (paths.diffusers / "model_index.json").is_file() and (paths.config / "model_index.json").is_file())


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> TinyKitPaths:
    """Build (or reuse) the tiny seeded SDXL kit under ``out_dir``; the caller's RNG state is untouched."""
    paths = TinyKitPaths.under(out_dir)
    if _is_built(paths, seed):
        return paths
    (paths.root / MANIFEST).unlink(missing_ok=True)
    for folder in (paths.diffusers, paths.config):
        shutil.rmtree(folder, ignore_errors=True)
    paths.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tlcm-kit-") as scratch, torch.random.fork_rng(devices=[]):
        pipe = tiny_sdxl_pipeline(scratch, seed=seed)
        pipe.save_pretrained(paths.diffusers, safe_serialization=True)
    save_sdxl_single_file(pipe, paths.checkpoint)
    shutil.copytree(paths.diffusers, paths.config, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (paths.root / MANIFEST).write_text(json.dumps(_manifest(seed)), encoding="utf-8")
    return paths
