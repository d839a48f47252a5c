"""AS: the LAION improved aesthetic predictor, the paper's aesthetic score.

The predictor is a small head on OpenAI CLIP ViT-L/14 image embeddings: the embedding is L2-normalised,
then passed through five linear layers 768 → 1024 → 128 → 64 → 16 → 1 with dropout between them and no
activation (the released ``sac+logos+ava1-l14-linearMSE.pth``, keys ``layers.{0,2,4,6,7}.{weight,bias}``;
dropout is the identity at inference, so the head is five affine maps). Other aesthetic predictors (the v1
linear head, the SigLIP-based v2.5) give numbers on other scales and are not this metric.

The CLIP image tower is a transformers ``CLIPModel`` folder (openai/clip-vit-large-patch14), preprocessed as
OpenAI CLIP evaluates (:class:`~tlcm.evaluation.clip_score.ClipScorer`). The head loads from safetensors or
from the released ``.pth``, a pickled dict of tensors, read with torch's restricted unpickler (no code runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..file_readers import read_json, read_state_dict
from .clip_score import ClipScorer, check_clip_folder

HEAD_LAYERS = (0, 2, 4, 6, 7)          # the Linear layers of the released nn.Sequential
HEAD_HINT = ("the LAION improved aesthetic predictor head sac+logos+ava1-l14-linearMSE.pth "
             "(github.com/christophschuhmann/improved-aesthetic-predictor), or a .safetensors copy of it")
AESTHETIC_CLIP_HINT = "the OpenAI CLIP ViT-L/14 in transformers layout (openai/clip-vit-large-patch14)"


def load_aesthetic_head(path: str | Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The head's (weight, bias) pairs in order, float32; a file of another layout is refused naming it."""
    state = read_state_dict(path)
    expected = {f"layers.{i}.{p}" for i in HEAD_LAYERS for p in ("weight", "bias")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path} is not the improved aesthetic predictor head (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); expected {HEAD_HINT}")
    layers = [(state[f"layers.{i}.weight"].float(), state[f"layers.{i}.bias"].float()) for i in HEAD_LAYERS]
    width = layers[0][0].shape[1]
    for i, (weight, bias) in zip(HEAD_LAYERS, layers):
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != weight.shape[:1]:
            raise ValueError(f"{path}: layer {i} has shape {tuple(weight.shape)} after width {width}; "
                             f"expected {HEAD_HINT}")
        width = weight.shape[0]
    if width != 1:
        raise ValueError(f"{path}: the head ends in {width} outputs, not 1; expected {HEAD_HINT}")
    return layers


def check_aesthetic_inputs(clip_folder: str | Path, head: str | Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The head's layers, once they are known to fit the CLIP folder's embedding width (its config.json:
    transformers' ``projection_dim``, 512 when absent), so a mismatch is found before any image is made."""
    layers = load_aesthetic_head(head)
    config = read_json(Path(check_clip_folder(clip_folder)) / "config.json")
    projection = int(config.get("projection_dim", 512)) if isinstance(config, dict) else 0
    if layers[0][0].shape[1] != projection:
        raise ValueError(f"{head} expects {layers[0][0].shape[1]}-d CLIP embeddings but {clip_folder} gives "
                         f"{projection}-d; pass {AESTHETIC_CLIP_HINT}")
    return layers


@dataclass
class AestheticScorer:
    clip: ClipScorer
    head: list[tuple[torch.Tensor, torch.Tensor]]
    variant: dict

    @classmethod
    def from_paths(cls, clip_folder: str | Path, head: str | Path, *,
                   device: str | torch.device = "cpu") -> "AestheticScorer":
        layers = check_aesthetic_inputs(clip_folder, head)
        clip = ClipScorer.from_folder(clip_folder, device=device)
        layers = [(w.to(clip.device), b.to(clip.device)) for w, b in layers]
        variant = {"clip": clip.variant["model"], "head": Path(head).name,
                   "preprocessing": clip.variant["preprocessing"],
                   "score": "head(image embedding / its L2 norm) per image, mean over images"}
        return cls(clip, layers, variant)

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[float]:
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.nn.functional.normalize(self.clip.image_embeddings(images[start:start + batch_size]), dim=-1)
            for weight, bias in self.head:
                x = torch.nn.functional.linear(x, weight, bias)
            out += x[:, 0].tolist()
        return out
