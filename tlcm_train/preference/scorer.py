"""The preference scorer seen by the trainer, TLCM's hinge loss on it (Eq. 11), and the scorer factory.

A scorer maps decoded images and prompt texts to one preference score per pair; it must be differentiable
with respect to the images, since the loss trains the student *through* it (docs/method.md §3). The
built-in kind is ``mps`` (the paper's MPS, CLIP-ViT-H-14 based, weights from its authors); any other scorer
is a plugin named ``module:OBJECT`` in the config, where ``OBJECT`` is a ``ScorerPlugin`` (the toy world's
scorer is ``tlcm_toy.scorer:TOY_SCORER``). Only a ``ScorerPlugin`` is accepted, so a config cannot name an
arbitrary function; importing the module still runs its code, so treat a config that names a plugin like
code.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from ..config import SCORER_PLUGIN

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
    "once to a state dict with `python -m tlcm_train.preference.mps_convert convert "
    "MPS_overall_checkpoint.pth mps_overall.safetensors` (tensors only: a file that would run code is "
    "refused) and pass that file.")


class ScorerError(ValueError):
    """A scorer kind that names no scorer; the message says what was expected."""


@dataclass(frozen=True)
class ScorerPlugin:
    """A preference scorer the trainer can load: ``load(path)`` builds it from a local weights file,
    ``tensor_names()`` lists the tensors it reads (so a wrong file is caught before a run starts),
    ``suffixes`` the weight-file suffixes it accepts and ``missing_hint`` how to get the file."""

    name: str
    load: Callable[[Path, torch.dtype], torch.nn.Module]
    tensor_names: Callable[[], set[str]]
    suffixes: tuple[str, ...] = (".safetensors",)
    missing_hint: str = ""


def _load_mps(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    from .mps import load_mps_scorer
    return load_mps_scorer(path, dtype=dtype)


def _mps_tensor_names() -> set[str]:
    from .mps import expected_tensor_names
    return expected_tensor_names()


MPS_SCORER = ScorerPlugin("mps", _load_mps, _mps_tensor_names, (".safetensors", ".pth", ".pt", ".bin"),
                          MPS_DOWNLOAD)


def resolve_scorer(kind: str) -> ScorerPlugin:
    """``mps`` or the ``ScorerPlugin`` a ``module:OBJECT`` reference names."""
    if kind == "mps":
        return MPS_SCORER
    if not SCORER_PLUGIN.match(kind):
        raise ScorerError(f"scorer must be 'mps' or a plugin 'module:OBJECT', got {kind!r}")
    module_name, _, attribute = kind.partition(":")
    try:
        plugin = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ScorerError(f"scorer plugin {kind!r} not found ({err})") from err
    if not isinstance(plugin, ScorerPlugin):
        raise ScorerError(f"scorer plugin {kind!r} is a {type(plugin).__name__}, not a ScorerPlugin")
    return plugin


def build_scorer(kind: str, weights: str | Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A frozen scorer (eval mode, no trainable parameters) loaded from a local weights file."""
    plugin, path = resolve_scorer(kind), Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{plugin.name} scorer weights not found at {path}. {plugin.missing_hint}".rstrip())
    scorer = plugin.load(path, dtype)
    return scorer.to(device=device, dtype=dtype).eval().requires_grad_(False)
