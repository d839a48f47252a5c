"""The latent LPIPS as a trainer distance (``distill.distance=latent_lpips``): frozen, float32, batch mean.

Gradients flow to the prediction only; the model follows the prediction's device on first use and runs
outside autocast, so a half-precision UNet does not push the distance into fp16.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .model import load_latent_lpips


def latent_lpips_distance(weights: str | Path) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if not str(weights):
        raise ValueError("distill.lpips_weights: required for distill.distance=latent_lpips (a .safetensors file "
                         "written by `python -m tlcm_train.lpips train`)")
    model = load_latent_lpips(weights)

    def distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        model.to(prediction.device)
        with torch.autocast(prediction.device.type, enabled=False):
            return model(prediction.float(), target.float()).mean()
    return distance
