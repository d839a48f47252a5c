"""Distances for the consistency losses (Eq. 7 and Eq. 10): d(prediction, stop-grad target) -> scalar.

The paper measures both losses with a latent LPIPS (``latent_lpips``: :mod:`tlcm_train.lpips`, weights from
the local file ``distill.lpips_weights``); squared L2 and pseudo-Huber need no model. A new distance is
one more entry in ``DISTANCE_FACTORIES`` taking the ``distill`` config section, so the stages never change.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from .config import DistillConfig
from .lpips.distance import latent_lpips_distance


class Distance(Protocol):
    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


def l2_distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32: the ‖·‖² of Eqs. 7 and 10."""
    return torch.mean((prediction.float() - target.float()) ** 2)


def pseudo_huber(c: float) -> Distance:
    """√((x − y)² + c²) − c per element, averaged: L2-like near 0, L1-like for outliers (as in LCM)."""
    def distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = prediction.float() - target.float()
        return torch.mean(torch.sqrt(diff * diff + c * c) - c)
    return distance


DISTANCE_FACTORIES: dict[str, Callable[[DistillConfig], Distance]] = {
    "l2": lambda config: l2_distance,
    "huber": lambda config: pseudo_huber(config.huber_c),
    "latent_lpips": lambda config: latent_lpips_distance(config.lpips_weights),
}


def build_distance(config: DistillConfig) -> Distance:
    try:
        return DISTANCE_FACTORIES[config.distance](config)
    except KeyError:
        raise ValueError(f"unknown distance {config.distance!r}; choose one of {', '.join(DISTANCE_FACTORIES)}") from None
