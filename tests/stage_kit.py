"""A cheap stand-in for the stage tests: a deterministic "UNet" (a smooth function of z, t and the prompt)
behind the real ``Denoiser``, so pair construction runs in milliseconds and depends on every draw."""
from __future__ import annotations

import torch

from tlcm_train.diffusion import Conditioning, Denoiser

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon")


class SmoothUNet(torch.nn.Module):
    """ε(z, t, c) = tanh(z + c) · (0.5 + t / 2000); the adapter switches are no-ops (one "model")."""

    dtype = torch.float32

    def forward(self, z, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        shift = added_cond_kwargs["text_embeds"][:, :z.shape[1], None, None]
        return (torch.tanh(z + shift) * (0.5 + t.view(-1, 1, 1, 1).float() / 2000),)

    def disable_adapters(self):
        pass

    def enable_adapters(self):
        pass

    def set_adapter(self, name):
        pass


def smooth_denoiser() -> Denoiser:
    return Denoiser(SmoothUNet(), SCHEDULER, torch.device("cpu"))


def prompts(batch: int) -> Conditioning:
    g = torch.Generator().manual_seed(11)
    return Conditioning(torch.randn(batch, 77, 8, generator=g), torch.randn(batch, 8, generator=g),
                        torch.zeros(batch, 6))
