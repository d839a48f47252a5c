"""The shared UNet seen as a denoiser: x̂0/ε̂ at per-sample timesteps, CFG, DDIM moves, forward diffusion.

Teacher, student and consistency target are the *same* module under different adapter states
(:mod:`tlcm_train.adapters`); this class only runs whatever state is active. Timesteps are integer tensors of
shape (B,) so every sample of a batch can sit on its own segment.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tlcm.sampling import split_model_output
from tlcm.schedules import alphas_cumprod_from_config


@dataclass
class Conditioning:
    """SDXL conditioning of a batch: penultimate text states, pooled embedding, size/crop ids."""

    embeds: torch.Tensor        # (B, 77, D)
    pooled: torch.Tensor        # (B, P)
    time_ids: torch.Tensor      # (B, 6)

    def rows(self, index: torch.Tensor) -> "Conditioning":
        """The conditioning of the samples at ``index``."""
        return Conditioning(self.embeds[index], self.pooled[index], self.time_ids[index])

    def with_uncond(self) -> "Conditioning":
        """(cond, uncond) stacked to 2B; the unconditional embedding is **zeros** (prompt and pooled),
        as in the diffusers LCM-LoRA script, PCM and DMD2 (docs/trainer.md §1)."""
        return Conditioning(torch.cat([self.embeds, torch.zeros_like(self.embeds)]),
                            torch.cat([self.pooled, torch.zeros_like(self.pooled)]),
                            torch.cat([self.time_ids, self.time_ids]))


def sdxl_time_ids(resolution: int, batch: int) -> torch.Tensor:
    """SDXL micro-conditioning (original size, crop top-left, target size) for square training images."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32).repeat(batch, 1)


class Denoiser:
    """UNet + the base model's noise schedule (ᾱ in float32 on the UNet's device)."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, device: torch.device):
        self.unet = unet
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        alphas = alphas_cumprod_from_config(scheduler_config)
        self.alphas = alphas.to(device=device, dtype=torch.float32)
        self.alphas_host = alphas.to(dtype=torch.float32)         # the same values, read without a device sync
        if self.prediction_type == "epsilon" and float(alphas.min()) == 0.0:        # checked on the CPU copy
            raise ValueError("the model's scheduler config has zero terminal SNR (rescale_betas_zero_snr) with "
                             "prediction_type 'epsilon': x̂0 is undefined at t = 999, the first milestone; distil a "
                             "v-prediction model or drop the rescale")

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t shaped (B, 1, 1, 1) for broadcasting over latents."""
        return self.alphas[t.to(self.alphas.device).long()].view(-1, 1, 1, 1)

    def model_output(self, z: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The raw UNet output (ε, v or x0 per ``prediction_type``) in float32, current adapter state."""
        dtype = self.unet.dtype
        out = self.unet(z.to(dtype), t, encoder_hidden_states=cond.embeds.to(dtype),
                        added_cond_kwargs={"text_embeds": cond.pooled.to(dtype), "time_ids": cond.time_ids.to(dtype)},
                        return_dict=False)[0]
        return out.float()

    def predict(self, z: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) of one UNet call in the current adapter state (the student: no CFG, w is distilled)."""
        return split_model_output(self.model_output(z, t, cond), z, self.alpha(t), self.prediction_type)

    def predict_cfg(self, z: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                    guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) with classifier-free guidance out = u + w (c − u), cond and uncond in one 2B call."""
        if guidance_scale == 1.0:
            return self.predict(z, t, cond)
        out_c, out_u = self.model_output(torch.cat([z, z]), torch.cat([t, t]), cond.with_uncond()).chunk(2)
        return split_model_output(out_u + guidance_scale * (out_c - out_u), z, self.alpha(t), self.prediction_type)

    def ddim_move(self, x0: torch.Tensor, eps: torch.Tensor, t_next: torch.Tensor,
                  clean_at_zero: bool = False) -> torch.Tensor:
        """Deterministic DDIM (η = 0) move to ``t_next``: √ᾱ x̂0 + √(1 − ᾱ) ε̂.

        ``clean_at_zero`` treats t_next = 0 as the clean latent (ᾱ := 1, i.e. x̂0), the milestone grid's last
        boundary: the TLCM sampler returns x̂0 there rather than z at ᾱ_0 = 0.99915.
        """
        a = self.alpha(t_next)
        if clean_at_zero:
            a = torch.where(t_next.view(-1, 1, 1, 1) == 0, torch.ones_like(a), a)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * eps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(z_t | x0)."""
        a = self.alpha(t)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise
