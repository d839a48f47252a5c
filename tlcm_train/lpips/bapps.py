"""Reader for BAPPS 2AFC data (Zhang et al. 2018, the LPIPS paper) and its adapter to latents.

Layout (as the PerceptualSimilarity repo's ``dataset/2afc/{train,val}/<subset>/``): a subset folder holds
``ref/``, ``p0/``, ``p1/`` images with the same file names and ``judge/<stem>.npy``, the fraction of
humans who judged p1 closer to ref. ``root`` may be one subset or a folder of subsets (e.g. ``tlcm_train/``
with ``cnn/ mix/ traditional/``). The user supplies the data; nothing is downloaded. The latent LPIPS
compares *latents*, so images are encoded once with the target model's VAE (:func:`encode_2afc`) and the
result can be saved as precomputed latents (:class:`~tlcm_train.lpips.twoafc.TwoAFCLatents`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .twoafc import TwoAFCLatents

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PARTS = ("ref", "p0", "p1", "judge")


class BappsError(ValueError):
    """A BAPPS folder is missing, incomplete or holds unreadable files."""


@dataclass(frozen=True)
class BappsTriplet:
    ref: Path
    p0: Path
    p1: Path
    judge: Path


def _subsets(root: Path) -> list[Path]:
    if (root / "ref").is_dir():
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "ref").is_dir())
    if not found:
        raise BappsError(f"{root}: no BAPPS 2AFC data (expected ref/, p0/, p1/, judge/ here or in subfolders)")
    return found


def _subset_triplets(subset: Path) -> list[BappsTriplet]:
    absent = [p for p in PARTS if not (subset / p).is_dir()]
    if absent:
        raise BappsError(f"{subset}: missing folder(s) {', '.join(absent)}/ (a 2AFC subset needs {', '.join(PARTS)})")
    refs = sorted(p for p in (subset / "ref").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not refs:
        raise BappsError(f"{subset / 'ref'}: no images ({', '.join(IMAGE_SUFFIXES)})")
    triplets, missing = [], []
    for ref in refs:
        paths = [subset / part / ref.name for part in ("p0", "p1")] + [subset / "judge" / f"{ref.stem}.npy"]
        missing += [p for p in paths if not p.is_file()]
        triplets.append(BappsTriplet(ref, *paths))
    if missing:
        raise BappsError(f"{subset}: {len(missing)} file(s) missing for the images in ref/, e.g. {missing[0]}")
    return triplets


def find_triplets(root: str | Path) -> list[BappsTriplet]:
    """Every (ref, p0, p1, judge) of a subset folder or a folder of subsets, checked complete."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BappsError(f"BAPPS folder not found: {root}")
    return [t for subset in _subsets(root) for t in _subset_triplets(subset)]


def load_image(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float in [-1, 1], the VAE's input range."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as err:
        raise BappsError(f"{path}: unreadable image ({err})") from err
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def load_judge(path: Path) -> float:
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BappsError(f"{path}: unreadable judge file ({err})") from err
    if value.size != 1 or not np.isfinite(value).all() or not 0.0 <= float(value.reshape(())) <= 1.0:
        raise BappsError(f"{path}: a judge must be one number in [0, 1], got {value!r}")
    return float(value.reshape(()))


def encode_2afc(triplets: list[BappsTriplet], encode: Callable[[torch.Tensor], torch.Tensor], size: int = 64,
                batch_size: int = 32) -> TwoAFCLatents:
    """Read and encode every triplet's images with ``encode`` ((B, 3, H, W) in [-1, 1] -> latents)."""
    parts: dict[str, list[torch.Tensor]] = {"ref": [], "p0": [], "p1": []}
    for start in range(0, len(triplets), batch_size):
        chunk = triplets[start:start + batch_size]
        for name in parts:
            with torch.no_grad():
                parts[name].append(encode(torch.stack([load_image(getattr(t, name), size) for t in chunk])).float().cpu())
    judge = torch.tensor([load_judge(t.judge) for t in triplets], dtype=torch.float32)
    return TwoAFCLatents(*(torch.cat(parts[k]) for k in ("ref", "p0", "p1")), judge)


def vae_encoder(vae: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images -> the UNet's latent space: posterior mean times the VAE's ``scaling_factor``."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype

    def encode(images: torch.Tensor) -> torch.Tensor:
        return vae.encode(images.to(device, dtype)).latent_dist.mean * vae.config.scaling_factor
    return encode


def load_vae(path: str | Path) -> torch.nn.Module:
    """A local diffusers AutoencoderKL folder, or an SDXL diffusers folder (its ``vae/``)."""
    from diffusers import AutoencoderKL
    path = Path(path).expanduser()
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers VAE at {path} (expected config.json there or in vae/)")
    return AutoencoderKL.from_pretrained(str(folder)).eval()
