"""Sample the toy models through the stock SDXL pipeline: the teacher with trailing DDIM, a student with TLCM.

Trailing DDIM (999, 499 at 2 steps = ``tlcm.schedules.uniform_timesteps``) is the teacher's strongest
few-step sampler (docs/eval.md §6), so the few-step gap measured with it is not a strawman. The unconditional
branch is SDXL's zero embedding (``force_zeros_for_empty_prompt``), the one the teacher was trained with.
A distilled student samples with ``TLCMScheduler`` (the official sampler) and no CFG.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tlcm.scheduler import TLCMScheduler

from .teacher import RESOLUTION


def ddim_trailing(pipe):
    """A DDIM scheduler on the pipeline's noise schedule with trailing timestep spacing."""
    from diffusers import DDIMScheduler
    return DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")


def tlcm(pipe) -> TLCMScheduler:
    """The official TLCM sampler (milestone timesteps, fresh noise) on the pipeline's noise schedule."""
    return TLCMScheduler.from_config(pipe.scheduler.config)


SCHEDULERS: dict[str, Callable] = {"ddim": ddim_trailing, "tlcm": tlcm}


@torch.no_grad()
def sample(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 250,
           scheduler: str = "ddim") -> np.ndarray:
    """Images in [0, 1], (N, 3, 32, 32); ``guidance`` <= 1 means one pass per step (no CFG). The noise of
    prompt i depends only on (seed, i), so configurations compare on identical starting noise."""
    pipe.scheduler = SCHEDULERS[scheduler](pipe)
    gen = torch.Generator().manual_seed(seed)
    channels, size = pipe.unet.config.in_channels, RESOLUTION // pipe.vae_scale_factor
    noise = torch.randn((len(prompts), channels, size, size), generator=gen)
    out = []
    for i in range(0, len(prompts), batch):
        images = pipe(prompt=prompts[i:i + batch], latents=noise[i:i + batch], num_inference_steps=steps,
                      guidance_scale=guidance, height=RESOLUTION, width=RESOLUTION, output_type="pt",
                      generator=torch.Generator().manual_seed(seed + 1 + i)).images
        out.append(images.float().clamp(0, 1).numpy())
    return np.concatenate(out)
