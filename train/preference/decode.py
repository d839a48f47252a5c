"""Differentiable VAE decode of student latents for the preference scorer.

The VAE-decoder backward is the largest activation cost of the MPS term at SDXL scale (docs/trainer.md §2):
every decoder activation of every sample is kept for the backward. With ``checkpoint=True`` the decode runs
in chunks of ``chunk`` samples under activation checkpointing: the forward keeps only each chunk's latents,
and the backward re-decodes one chunk at a time, so the peak is one chunk's decoder activations (at the
price of a second decoder forward).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint


def _decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1] (float32); SDXL stores latents multiplied by scaling_factor."""
    cfg = vae.config
    z = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    images = vae.decode(z.to(vae.dtype)).sample.float()
    return (images * 0.5 + 0.5).clamp(0.0, 1.0)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, *, checkpoint: bool = False,
                   chunk: int = 1) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1], differentiable w.r.t. ``latents`` (clamping stops the gradient only
    for pixels outside [0, 1]); ``checkpoint`` trades a second decoder forward for memory."""
    if not checkpoint:
        return _decode(vae, latents)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return torch.cat([activation_checkpoint(_decode, vae, part, use_reentrant=False)
                      for part in latents.split(chunk)])
