"""The preference scorer seen by the trainer, TLCM's hinge loss on it (Eq. 11), and the scorer factory.

A scorer maps decoded images and prompt texts to one preference score per pair; it must be differentiable
with respect to the images, since the loss trains the student *through* it (docs/method.md §3). Two kinds
exist: ``mps`` (the paper's MPS, CLIP-ViT-H-14 based, weights from its authors) and ``toy`` (a small scorer
for the toy world, trained here, calibrated so that the paper's margin s0 = 16 means the same thing).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import torch

DEFAULT_MARGIN = 16.0        # the paper's s0


class Scorer(Protocol):
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores (B,) float32 of images (B, 3, H, W) in [0, 1] against ``prompts`` (B texts)."""


def hinge_preference_loss(scores_pos: torch.Tensor, scores_neg: torch.Tensor,
                          margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """Eq. 11, batch mean of max(s0 − s(x, c_pos), 0) + max(s(x, c_neg), 0): the image must score at
    least s0 with its own prompt and at most 0 with an unrelated one; satisfied pairs give no gradient."""
    if scores_pos.shape != scores_neg.shape or scores_pos.dim() != 1:
        raise ValueError(f"scores must both be (B,), got {tuple(scores_pos.shape)} and {tuple(scores_neg.shape)}")
    return ((margin - scores_pos).clamp_min(0) + scores_neg.clamp_min(0)).mean()


MPS_DOWNLOAD = (
    "The MPS 'overall' checkpoint comes from its authors (github.com/Kwai-Kolors/MPS, README 'Download the MPS "
    "checkpoint', a Google Drive link: MPS_overall_checkpoint.pth). It is a pickled whole model: convert it "
    "once to a state dict with `python -m train.preference.mps convert MPS_overall_checkpoint.pth "
    "mps_overall.safetensors` (tensors only: a file that would run code is refused) and pass that file.")
TOY_TRAIN = ("The toy scorer is committed as train/toy/weights/scorer.safetensors; to rebuild it run "
             "`python -m train.preference.toy_scorer --out train/toy/weights/scorer.safetensors`.")


def build_scorer(kind: Literal["mps", "toy"], weights: str | Path,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A frozen scorer (eval mode, no trainable parameters) loaded from a local weights file."""
    path = Path(weights)
    if kind not in ("mps", "toy"):
        raise ValueError(f"scorer kind must be 'mps' or 'toy', got {kind!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} scorer weights not found at {path}. "
                                + (MPS_DOWNLOAD if kind == "mps" else TOY_TRAIN))
    if kind == "mps":
        from .mps import load_mps_scorer
        scorer = load_mps_scorer(path, dtype=dtype)
    else:
        from .toy_scorer import load_toy_scorer
        scorer = load_toy_scorer(path)
    return scorer.to(device=device, dtype=dtype).eval().requires_grad_(False)
