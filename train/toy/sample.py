"""Sample the toy teacher through the stock SDXL pipeline with DDIM on trailing timesteps.

Trailing DDIM (999, 499 at 2 steps = ``tlcm.schedules.uniform_timesteps``) is the teacher's strongest
few-step sampler (eval.md §6), so the few-step gap measured with it is not a strawman. The unconditional
branch is SDXL's zero embedding (``force_zeros_for_empty_prompt``), the one the teacher was trained with.
"""
from __future__ import annotations

import numpy as np
import torch

from .teacher import RESOLUTION


def ddim_trailing(pipe):
    """A DDIM scheduler on the pipeline's noise schedule with trailing timestep spacing."""
    from diffusers import DDIMScheduler
    return DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")


@torch.no_grad()
def sample(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 250) -> np.ndarray:
    """Images in [0, 1], (N, 3, 32, 32); ``guidance`` <= 1 means one pass per step (no CFG). The noise of
    prompt i depends only on (seed, i), so configurations compare on identical starting noise."""
    pipe.scheduler = ddim_trailing(pipe)
    gen = torch.Generator().manual_seed(seed)
    channels, size = pipe.unet.config.in_channels, RESOLUTION // pipe.vae_scale_factor
    noise = torch.randn((len(prompts), channels, size, size), generator=gen)
    out = []
    for i in range(0, len(prompts), batch):
        images = pipe(prompt=prompts[i:i + batch], latents=noise[i:i + batch], num_inference_steps=steps,
                      guidance_scale=guidance, height=RESOLUTION, width=RESOLUTION, output_type="pt").images
        out.append(images.float().clamp(0, 1).numpy())
    return np.concatenate(out)
