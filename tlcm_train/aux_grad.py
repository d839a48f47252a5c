"""Auxiliary losses under other adapter states, folded into **one** student backward (docs/trainer.md §3).

Terms such as the DMD real/fake scores or the GAN generator loss run the shared UNet under another
adapter state (``fake``, or adapters disabled). A plain ``backward()`` through such a graph loses the
student's gradients (PEFT turns their ``requires_grad`` off) or, with gradient checkpointing, recomputes
under the wrong state. The verified pattern: each term sees a detached copy x0d of the student output,
its gradient g_k = ∂L_k/∂x0d is taken *while its state is active* (its graph is freed right there), the
student state is restored, and one backward of L_main + (x0 · Σ w_k g_k).sum() hands the student
exactly Σ w_k (∂x0/∂θ)ᵀ g_k, the chain rule through x0, on top of ∂L_main/∂θ.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch

Logged = dict[str, torch.Tensor]
"""Values to log, as detached scalar tensors: read on the host only at a logging step, so a training step
never waits for the device to report a number."""


@dataclass
class AuxTerm:
    """One auxiliary loss L(x0) -> scalar, its weight, and the state it must run in (default: none needed,
    e.g. a VAE decode + scorer that never touches the UNet)."""

    name: str
    loss: Callable[[torch.Tensor], torch.Tensor]
    weight: float = 1.0
    state: Callable[[], ContextManager] = field(default=nullcontext)


def aux_gradient(x0: torch.Tensor, terms: list[AuxTerm], on_phase: Callable[[str], None] | None = None,
                 ) -> tuple[torch.Tensor, Logged]:
    """g = Σ w_k ∂L_k/∂x0 (float32, detached) and each term's loss value; every term's graph is freed
    before the next runs, so peak memory is the largest single term, not their sum. ``on_phase`` (a
    measurement hook) hears "term:<name>" after each term."""
    g = torch.zeros_like(x0, dtype=torch.float32)
    values: Logged = {}
    for term in terms:
        x0d = x0.detach().float().requires_grad_(True)
        with term.state(), torch.enable_grad():
            loss = term.loss(x0d)
            if loss.dim() != 0:
                raise ValueError(f"auxiliary loss {term.name!r} must be a scalar, got shape {tuple(loss.shape)}")
            (grad,) = torch.autograd.grad(loss, x0d, allow_unused=True)
        if grad is None:
            raise ValueError(f"auxiliary loss {term.name!r} does not depend on x0: it would train nothing")
        g += term.weight * grad
        values[term.name] = loss.detach()
        if on_phase:
            on_phase(f"term:{term.name}")
    return g, values


def with_aux(main_loss: torch.Tensor, x0: torch.Tensor, terms: list[AuxTerm],
             on_phase: Callable[[str], None] | None = None) -> tuple[torch.Tensor, Logged]:
    """The surrogate to call ``backward()`` on (in the student state): its gradient is that of
    L_main + Σ w_k L_k(x0); its *value* is not a loss, so the term values are returned for logging."""
    g, values = aux_gradient(x0, terms, on_phase)
    return main_loss + (x0.float() * g).sum(), values
