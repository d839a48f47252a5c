"""One consistency training step, shared by both stages: d(F(z_tm, t_m), sg(F(z_tn, t_n))).

A stage supplies the pair (z_tm, t_m) -> (z_tn, t_n) built with the teacher (and, in stage 2, a student
rollout), plus the output map F (stage 1: the DDIM jump g_θ to the segment boundary; stage 2: f_θ = x̂0).
The target is the *current* student under ``no_grad`` (no EMA, TLCM §4). Order matters for the
adapter-switch trap (docs/trainer.md §3): everything under other adapter states (teacher) runs first,
then the target, then the one forward with gradients, all in the student state that ``backward()`` sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .diffusion import Conditioning, Denoiser
from .losses import Distance


@dataclass
class ConsistencyPair:
    """Two points of one teacher trajectory and where the stage maps them (``boundary``, per sample)."""

    z_m: torch.Tensor
    t_m: torch.Tensor
    z_n: torch.Tensor
    t_n: torch.Tensor
    boundary: torch.Tensor
    rollout: torch.Tensor | None = None     # stage 2: the student rollout ẑ0 that z_m diffuses (Eq. 9)


class Stage(Protocol):
    name: str

    def make_pair(self, denoiser: Denoiser, cond: Conditioning, generator: torch.Generator) -> ConsistencyPair:
        """Sample timesteps and noise and run the frozen parts (teacher, rollouts) under no_grad."""

    def output(self, denoiser: Denoiser, x0: torch.Tensor, eps: torch.Tensor, pair: ConsistencyPair) -> torch.Tensor:
        """The student output compared by the loss, from its (x̂0, ε̂)."""


def consistency_step(stage: Stage, denoiser: Denoiser, cond: Conditioning, distance: Distance,
                     generator: torch.Generator, on_phase: Callable[[str], None] | None = None,
                     ) -> tuple[torch.Tensor, ConsistencyPair, torch.Tensor]:
    """The stage's loss, its pair and the student's x̂0 at (z_tm, t_m), both with a graph to the student
    LoRA only (x̂0 is what auxiliary terms act on); call ``backward()`` before switching adapters.
    ``on_phase`` (a measurement hook) hears "pair" after the pair and "student_fwd" after the loss."""
    pair = stage.make_pair(denoiser, cond, generator)
    if on_phase:
        on_phase("pair")
    with torch.no_grad():
        target = stage.output(denoiser, *denoiser.predict(pair.z_n, pair.t_n, cond), pair)
    x0, eps = denoiser.predict(pair.z_m, pair.t_m, cond)
    loss = distance(stage.output(denoiser, x0, eps, pair), target)
    if on_phase:
        on_phase("student_fwd")
    return loss, pair, x0


def consistency_loss(stage: Stage, denoiser: Denoiser, cond: Conditioning, distance: Distance,
                     generator: torch.Generator) -> torch.Tensor:
    """Just the loss of :func:`consistency_step`."""
    return consistency_step(stage, denoiser, cond, distance, generator)[0]


def randn(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Gaussian noise from the (CPU) training generator, so runs resume bit-exactly on any device."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device)


def randint(low: torch.Tensor | int, high: torch.Tensor | int, batch: int, generator: torch.Generator,
            device: torch.device) -> torch.Tensor:
    """Per-sample integers uniform in [low, high] (inclusive; tensors broadcast per sample)."""
    low_t = torch.as_tensor(low).expand(batch).long().cpu()
    high_t = torch.as_tensor(high).expand(batch).long().cpu()
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return (low_t + torch.floor(u * (high_t - low_t + 1).double()).long()).to(device)
