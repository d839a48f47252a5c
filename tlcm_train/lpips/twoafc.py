"""2AFC triplets in latent space: (ref, p0, p1, judge), the one format the LPIPS trainer reads.

``judge`` is BAPPS's: the fraction of judges who found **p1** closer to ref (0 = p0 closer, 1 = p1 closer).
BAPPS images become this via :func:`tlcm_train.lpips.bapps.encode_2afc`; synthetic sets are built directly
(:mod:`tlcm_train.lpips.synthetic`); either can be saved once and reused as "precomputed latents".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FIELDS = ("ref", "p0", "p1", "judge")


@dataclass
class TwoAFCLatents:
    ref: torch.Tensor       # (N, C, h, w)
    p0: torch.Tensor
    p1: torch.Tensor
    judge: torch.Tensor     # (N,) in [0, 1]

    def __post_init__(self) -> None:
        if self.ref.dim() != 4 or self.p0.shape != self.ref.shape or self.p1.shape != self.ref.shape:
            raise ValueError(f"2AFC: ref/p0/p1 must share one (N, C, h, w) shape, got {tuple(self.ref.shape)}, "
                             f"{tuple(self.p0.shape)}, {tuple(self.p1.shape)}")
        if self.judge.shape != (len(self.ref),):
            raise ValueError(f"2AFC: judge must have shape ({len(self.ref)},), got {tuple(self.judge.shape)}")
        if len(self.ref) == 0:
            raise ValueError("2AFC: the set is empty")
        if bool(((self.judge < 0) | (self.judge > 1)).any()) or not bool(torch.isfinite(self.judge).all()):
            raise ValueError("2AFC: judge values must lie in [0, 1]")

    def __len__(self) -> int:
        return len(self.ref)

    def subset(self, index: torch.Tensor | slice) -> "TwoAFCLatents":
        return TwoAFCLatents(self.ref[index], self.p0[index], self.p1[index], self.judge[index])

    def to(self, device: torch.device | str) -> "TwoAFCLatents":
        return TwoAFCLatents(*(getattr(self, k).to(device) for k in FIELDS))

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).float().contiguous() for k in FIELDS}, str(path))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TwoAFCLatents":
        from safetensors.torch import load_file
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"2AFC latents not found: {path}")
        data = load_file(str(path))
        missing = [k for k in FIELDS if k not in data]
        if missing:
            raise ValueError(f"{path}: not a 2AFC latent file, missing tensors {missing}")
        return cls(*(data[k] for k in FIELDS))
