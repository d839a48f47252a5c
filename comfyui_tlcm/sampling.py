"""The core TLCM sampler and milestone schedule in ComfyUI's conventions (seeded noise, the model's sigmas)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from comfy.k_diffusion.sampling import default_noise_sampler

from ..tlcm.sampling import sample_tlcm as core_sample_tlcm
from ..tlcm.schedules import schedule_timesteps


def sample_tlcm(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                extra_args: dict[str, Any] | None = None, callback: Callable[[dict], None] | None = None,
                disable: bool | None = None, noise_sampler: Callable | None = None, eta: float = 1.0) -> torch.Tensor:
    """k-diffusion sampler ``tlcm``: the core loop, with fresh noise seeded from the prompt's seed.

    ComfyUI passes the seed in ``extra_args`` and expects samplers to derive their noise from it (as its
    ``lcm`` does), so results repeat per seed; the core's default would draw from the global RNG.
    """
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed=(extra_args or {}).get("seed"))
    return core_sample_tlcm(model, x, sigmas, extra_args, callback, disable, noise_sampler, eta)


def tlcm_sigmas(model_sampling: Any, steps: int, schedule: str = "tlcm", denoise: float = 1.0) -> torch.Tensor:
    """``steps + 1`` sigmas ending in 0 from the model's own ``model_sampling`` (its ᾱ table, its dtype).

    The timesteps come from the core (official table, N > 8 and partial-denoise rules), so ComfyUI, the
    WebUI extension and the diffusers scheduler visit the same milestones.
    """
    timesteps = schedule_timesteps(steps, schedule, denoise=denoise, num_train_timesteps=len(model_sampling.sigmas))
    sigmas = model_sampling.sigma(torch.tensor(timesteps, dtype=torch.float32))
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def tlcm_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """Scheduler ``tlcm`` for KSampler; its denoise < 1 asks for ``int(steps/denoise)`` and keeps the tail."""
    return tlcm_sigmas(model_sampling, steps)
