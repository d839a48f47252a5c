"""Training the latent LPIPS on 2AFC triplets with LPIPS's ranking loss (CLI: :mod:`tlcm_train.lpips.cli`).

LPIPS (Zhang et al. 2018) learns from 2AFC judgements through a small network G on the two distances,
G(d0, d1) -> P(p1 judged closer), trained with BCE against the human fraction; G is thrown away after
training. By default everything (trunk and heads) trains, from scratch as TLCM trained its latent LPIPS
or from given weights (LPIPS's "tune"); ``train_trunk=False`` keeps a pretrained trunk frozen and learns
only the linear heads (LPIPS's "lin", the variant its paper recommends). Heads are projected onto
w >= 0 after every step. Agreement is BAPPS's 2AFC score: a pair counts ``judge``
if the model ranks p1 closer, ``1 - judge`` if p0, and half of each on a tie (chance = 0.5).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .model import LatentLPIPS
from .twoafc import TwoAFCLatents

EPS = 0.1


class JudgeNet(nn.Module):
    """G(d0, d1): per-pair features (d0, d1, d0 − d1, d0/(d1+ε), d1/(d0+ε)) -> logit of "p1 closer"."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([d0, d1, d0 - d1, d0 / (d1 + EPS), d1 / (d0 + EPS)], dim=1)
        return self.net(feats).squeeze(1)


def pair_distances(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   batch: TwoAFCLatents) -> tuple[torch.Tensor, torch.Tensor]:
    return model(batch.ref, batch.p0), model(batch.ref, batch.p1)


def train_lpips(model: LatentLPIPS, data: TwoAFCLatents, *, steps: int, batch_size: int = 32, lr: float = 1e-4,
                generator: torch.Generator | None = None, train_trunk: bool = True) -> list[float]:
    """Adam on trunk (unless ``train_trunk`` is False: frozen, batch-norm statistics too) + heads + a fresh
    G with the ranking BCE; minibatches drawn with ``generator``. Returns the loss per step; the model is
    left frozen in eval mode."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    generator = generator or torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    judge_net = JudgeNet().to(device)
    model.requires_grad_(True).train()
    if not train_trunk:
        model.trunk.requires_grad_(False).eval()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([*trained, *judge_net.parameters()], lr=lr, betas=(0.5, 0.999))
    losses = []
    for _ in range(steps):
        index = torch.randint(len(data), (min(batch_size, len(data)),), generator=generator)
        batch = data.subset(index).to(device)
        d0, d1 = pair_distances(model, batch)
        loss = nn.functional.binary_cross_entropy_with_logits(judge_net(d0, d1), batch.judge)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.clamp_heads_()
        losses.append(float(loss.detach()))
    model.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def two_afc_agreement(distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: TwoAFCLatents,
                      batch_size: int = 64) -> float:
    """BAPPS 2AFC score on ``data``, in [0, 1], of a latent LPIPS (run in eval mode) or any per-sample
    distance function (latent L2 as the baseline)."""
    module = distance if isinstance(distance, nn.Module) else None
    device = next(module.parameters()).device if module is not None else data.ref.device
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    scores = []
    for i in range(0, len(data), batch_size):
        b = data.subset(slice(i, i + batch_size)).to(device)
        d0, d1 = pair_distances(distance, b)
        p1_closer = (d1 < d0).float() + 0.5 * (d1 == d0).float()
        scores.append(p1_closer * b.judge + (1 - p1_closer) * (1 - b.judge))
    if module is not None:
        module.train(was_training)
    return float(torch.cat(scores).mean())
