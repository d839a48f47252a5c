"""The contract of the "bag of techniques" (MPS preference, distribution matching, adversarial loss).

Each technique adds auxiliary terms to the student's step and may train parts of its own (a fake-score
LoRA on the shared UNet, discriminator heads). The loop calls, per optimizer step of a stage that uses it:

1. ``terms(batch)`` — :class:`~tlcm_train.aux_grad.AuxTerm` s on the student's x̂0; their gradients reach the
   student through the one backward of :func:`~tlcm_train.aux_grad.with_aux` (docs/trainer.md §3);
2. the student's optimizer step;
3. ``update(batch)`` — the technique's own optimizer steps (its own backward(s), under its own adapter
   state, on detached student samples); returns loss values for logging.

``state_dict()`` / ``load_state_dict()`` carry everything trainable it owns (adapter weights, heads,
optimizer states) for exact resume; ``parameters()`` lists its trainable tensors (for gradient averaging
across processes before its own optimizer steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .aux_grad import AuxTerm, Logged
from .diffusion import Conditioning, Denoiser


@dataclass
class AuxBatch:
    """What one student step hands to a technique.

    ``x0`` is the student's one-step x̂0 of ``z_t`` at ``t`` **with its graph** (terms must only use it
    through the detached copy :func:`~tlcm_train.aux_grad.aux_gradient` passes them); ``z_t`` is the noisy
    input of Eq. 9, the student's multi-step rollout ``rollout`` (ẑ0, no graph) diffused to ``t``, so x0
    is the paper's z̃0. ``rollout`` is None only where no stage-2 pair exists (batches built by hand).
    """

    denoiser: Denoiser
    cond: Conditioning
    prompts: list[str]                 # the batch's prompt texts (scorers with their own text encoder)
    z_t: torch.Tensor
    t: torch.Tensor
    x0: torch.Tensor
    generator: torch.Generator         # the training generator (CPU): all randomness for exact resume
    rollout: torch.Tensor | None = None


def rollout_of(batch: AuxBatch, who: str) -> torch.Tensor:
    """The batch's ẑ0, or a clear error where the batch has none."""
    if batch.rollout is None:
        raise ValueError(f"{who} needs the student rollout ẑ0 (AuxBatch.rollout), which only stage-2 pairs carry")
    return batch.rollout


class Technique(Protocol):
    name: str

    def terms(self, batch: AuxBatch) -> list[AuxTerm]:
        """Auxiliary student losses for this step (each runs under its own adapter state)."""

    def update(self, batch: AuxBatch) -> Logged:
        """The technique's own training step(s) after the student's; returns values to log."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """Its trainable tensors (empty when it trains nothing of its own)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume it exactly: tensors, numbers, strings, None, and lists, tuples and dicts
        (str or int keys) of them, which checkpoints store without pickle (``tlcm_train.state_files.flatten_state``)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output, refusing a mismatched one."""
