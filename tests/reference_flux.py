"""The FLUX.1 reference loops, written out for the tests: the official TLCM-FLUX step and FLUX's own Euler
sampler on a second, independently loaded copy of a (tiny) FLUX folder.

The LoRA is merged by hand (W += strength · alpha/r · B·A on every target), the start latents and each
TLCM step's fresh noise come from one generator seeded with the image's seed, the sigmas of FLUX's
resolution shift are computed by formula, then diffusers' own unpack and VAE decode make the image.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from tlcm.lora import TLCM_FLUX_TARGET_SUFFIXES

FLUX_LORA_RANK, FLUX_LORA_ALPHA = 4, 3.0        # alpha != r: a loader that ignores alpha is off by 0.75


def flux_targets(transformer) -> dict[str, torch.nn.Linear]:
    """The TLCM-FLUX LoRA targets of ``transformer`` by module path."""
    return {name: m for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
            and any(name == s or name.endswith("." + s) for s in TLCM_FLUX_TARGET_SUFFIXES)}


def shifted_sigmas(steps: int, size: int) -> list[float]:
    """FLUX.1-dev's sigmas at ``size``²: linspace(1, 1/n, n) under the shift μ of the image's token count
    (0.5 at 256 tokens to 1.15 at 4096), then 0."""
    tokens = (size // 16) ** 2
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)
    return [math.exp(mu) / (math.exp(mu) + 1 / s - 1) for s in np.linspace(1.0, 1 / steps, steps)] + [0.0]


def reference_image(flux_folder, prompt: str, seed: int, steps: int, size: int, *, guidance: float = 7.0,
                    sampler: str = "tlcm", lora: tuple[dict, float, float] | None = None) -> np.ndarray:
    """One image (H, W, 3) int16 levels. ``sampler``: ``tlcm`` (x̂0 = x − σv, re-noised with fresh noise) or
    ``euler`` (x += (σ_next − σ)·v); ``lora``: (factors {path: (A, B)}, alpha/r, strength)."""
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(flux_folder, local_files_only=True)
    if lora is not None:
        factors, scale, strength = lora
        with torch.no_grad():
            for name, module in flux_targets(pipe.transformer).items():
                a, b = factors[name]
                module.weight += strength * scale * (b @ a)
    sigmas = shifted_sigmas(steps, size)
    generator = torch.Generator().manual_seed(seed)
    channels = pipe.transformer.config.in_channels // 4
    side = 2 * (size // (pipe.vae_scale_factor * 2))
    x = pipe._pack_latents(torch.randn(1, channels, side, side, generator=generator), 1, channels, side, side)
    embeds, pooled, text_ids = pipe.encode_prompt(prompt, prompt_2=None)
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, "cpu", torch.float32)
    with torch.no_grad():
        for i in range(steps):
            v = pipe.transformer(hidden_states=x, timestep=torch.tensor([sigmas[i]]), guidance=torch.tensor([guidance]),
                                 pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                 img_ids=image_ids, return_dict=False)[0]
            if sampler == "euler":
                x = x + (sigmas[i + 1] - sigmas[i]) * v
                continue
            x0 = x - sigmas[i] * v
            x = x0 if sigmas[i + 1] == 0 else (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * torch.randn(
                x0.shape, generator=generator)
        z = pipe._unpack_latents(x, size, size, pipe.vae_scale_factor)
        z = z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(z, return_dict=False)[0]
    return np.asarray(pipe.image_processor.postprocess(image, output_type="pil")[0], dtype=np.int16)
