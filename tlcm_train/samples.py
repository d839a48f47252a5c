"""Sample grids during training: the student at 2/4/8 steps with ``TLCMScheduler`` (official sampler).

Rows are sample prompts, columns step counts; seeds are fixed so grids of successive steps compare. The
VAE lives on the CPU between grids and visits the device only to decode (it is unneeded for training), one
image at a time: at 1024² a batched fp32 decode would add gigabytes to the peak the training just reached.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from tlcm.files import atomic_write
from tlcm.scheduler import TLCMScheduler

from .diffusion import Conditioning, Denoiser


@torch.no_grad()
def sample_latents(denoiser: Denoiser, scheduler: TLCMScheduler, cond: Conditioning, steps: int,
                   latent_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """TLCM sampling with the current student (no CFG: the guidance is distilled into the LoRA)."""
    device = cond.embeds.device
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn((cond.embeds.shape[0], *latent_shape), generator=generator).to(device)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        out = denoiser.model_output(z, t.expand(z.shape[0]).to(device), cond)
        z = scheduler.step(out, t, z, generator=generator).prev_sample
    return z


@torch.no_grad()
def decode(vae, latents: torch.Tensor, device: torch.device) -> list[Image.Image]:
    """Latents -> PIL images, one at a time, moving the VAE to ``device`` only for the call."""
    vae.to(device)
    try:
        images = [vae.decode(latent[None].to(device, vae.dtype) / vae.config.scaling_factor).sample[0].cpu()
                  for latent in latents]
    finally:
        vae.to("cpu")
    return [Image.fromarray(((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
            for image in images]


def save_grid(denoiser: Denoiser, scheduler: TLCMScheduler, vae, cond: Conditioning, steps: Sequence[int],
              latent_shape: tuple[int, int, int], seed: int, path: Path) -> Path:
    """One row per prompt, one column per step count; returns ``path``."""
    columns = [decode(vae, sample_latents(denoiser, scheduler, cond, n, latent_shape, seed), cond.embeds.device)
               for n in steps]
    width, height = columns[0][0].size
    grid = Image.new("RGB", (width * len(steps), height * len(columns[0])))
    for col, images in enumerate(columns):
        for row, image in enumerate(images):
            grid.paste(image, (col * width, row * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
