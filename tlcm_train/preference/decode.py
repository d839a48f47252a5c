"""Differentiable VAE decode of student latents for the preference scorer, with the memory options.

The VAE-decoder backward is the largest activation cost of the MPS term at SDXL scale (docs/trainer.md §2,
bench/results/memory_stages.md): a plain decode of one 1024² image keeps ≈ 20 GiB of fp32 activations for
the backward. Three options cut it, each exact or documented:

- ``checkpoint="unit"`` runs the decoder as a chain of units (post-quant conv + conv_in, the mid block,
  every up-block resnet and upsampler, the output head) under activation checkpointing: the forward keeps
  only each unit's input, the backward recomputes one unit at a time (one extra decoder forward). Same
  values and gradients as the plain decode.
- a lower ``dtype`` (bf16; SDXL's VAE overflows in fp16) halves what is kept; the decode runs on a copy of
  the VAE in that dtype, so the fp32 VAE of the sample grids is untouched.
- ``crop`` decodes a random ``crop`` x ``crop`` window of the latents instead of the whole image (area and
  memory shrink with the square of the side): the scorer then judges a part of the image against the whole
  prompt, an approximation the paper does not make; off (0) by default.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..config import DECODE_CHECKPOINTS

Unit = Callable[[torch.Tensor], torch.Tensor]


def decoder_units(vae: torch.nn.Module) -> list[Unit]:
    """diffusers' ``AutoencoderKL`` decode (no tiling) as a chain of small functions; running them in turn
    equals ``vae.decode(z).sample`` (tested)."""
    dec = vae.decoder
    post_quant = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else torch.nn.Identity()
    units: list[Unit] = [lambda z: dec.conv_in(post_quant(z)), dec.mid_block]
    for block in dec.up_blocks:
        units += [lambda h, resnet=resnet: resnet(h, None) for resnet in block.resnets]
        units += list(block.upsamplers or [])
    units.append(lambda h: dec.conv_out(dec.conv_act(dec.conv_norm_out(h))))
    return units


def _run_units(units: list[Unit], z: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    for unit in units:
        z = activation_checkpoint(unit, z, use_reentrant=False) if checkpoint else unit(z)
    return z


def crop_window(height: int, width: int, size: int, generator: torch.Generator) -> tuple[slice, slice]:
    """Rows and columns of one ``size`` x ``size`` latent window, its position drawn from ``generator``."""
    if not 0 < size <= min(height, width):
        raise ValueError(f"decode crop {size} must be in 1..{min(height, width)} for {height}x{width} latents")
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return slice(top, top + size), slice(left, left + size)


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, *, checkpoint: str = "none") -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] (float32), differentiable w.r.t. ``latents`` (clamping stops the
    gradient only for pixels outside [0, 1]); the decode runs in ``vae``'s dtype. SDXL stores latents
    multiplied by ``scaling_factor`` (and shifted by ``shift_factor`` in newer VAEs)."""
    if checkpoint not in DECODE_CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {DECODE_CHECKPOINTS}, got {checkpoint!r}")
    cfg = vae.config
    z = (latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)).to(vae.dtype)
    images = _run_units(decoder_units(vae), z, checkpoint == "unit").float()
    return (images * 0.5 + 0.5).clamp(0.0, 1.0)
