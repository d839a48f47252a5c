"""The core TLCM sampler and milestone schedule in ComfyUI's conventions (seeded noise, the model's sigmas).

Flow-matching models (FLUX: ComfyUI's CONST model sampling, x_σ = (1 − σ)·x0 + σ·ε) take the core's flow
step and FLUX's own schedule; every other model the ε/v step on the milestone table."""
from __future__ import annotations

from typing import Any, Callable

import comfy.model_sampling
import torch
from comfy.k_diffusion.sampling import default_noise_sampler

from ..tlcm.sampling import sample_tlcm as core_sample_tlcm
from ..tlcm.sampling import sample_tlcm_flow as core_sample_tlcm_flow
from ..tlcm.schedules import flow_times, schedule_timesteps


def is_flow(model_sampling: Any) -> bool:
    """A flow-matching model (FLUX, SD3): ComfyUI's CONST prediction."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def sample_tlcm(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                extra_args: dict[str, Any] | None = None, callback: Callable[[dict], None] | None = None,
                disable: bool | None = None, noise_sampler: Callable | None = None, eta: float = 1.0) -> torch.Tensor:
    """k-diffusion sampler ``tlcm``: the core loop, with fresh noise seeded from the prompt's seed.

    ComfyUI passes the seed in ``extra_args`` and expects samplers to derive their noise from it (as its
    ``lcm`` does), so results repeat per seed; the core's default would draw from the global RNG.
    """
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed=(extra_args or {}).get("seed"))
    if is_flow(model.inner_model.model_patcher.get_model_object("model_sampling")):
        if eta != 1.0:
            raise ValueError(f"eta {eta:g}: a flow model (FLUX) takes the official TLCM step only, eta 1")
        return core_sample_tlcm_flow(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    return core_sample_tlcm(model, x, sigmas, extra_args, callback, disable, noise_sampler, eta)


def tlcm_sigmas(model_sampling: Any, steps: int, schedule: str = "tlcm", denoise: float = 1.0) -> torch.Tensor:
    """``steps + 1`` sigmas ending in 0 from the model's own ``model_sampling`` (its ᾱ table, its dtype).

    The timesteps come from the core (official table, N > 8 and partial-denoise rules), so ComfyUI, the
    WebUI extension and the diffusers scheduler visit the same milestones. A flow model maps the core's FLUX
    times through its own shift (``percent_to_sigma``), as ``FluxPipeline`` shifts linspace(1, 1/n, n).
    """
    if is_flow(model_sampling):
        if schedule != "tlcm":
            raise ValueError(f"schedule {schedule!r}: a flow model (FLUX) has one TLCM schedule, 'tlcm'")
        times = flow_times(steps, denoise=denoise)
        sigmas = torch.tensor([float(model_sampling.percent_to_sigma(1.0 - t)) for t in times], dtype=torch.float32)
        return torch.cat([sigmas, sigmas.new_zeros([1])])
    timesteps = schedule_timesteps(steps, schedule, denoise=denoise, num_train_timesteps=len(model_sampling.sigmas))
    sigmas = model_sampling.sigma(torch.tensor(timesteps, dtype=torch.float32))
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def tlcm_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """Scheduler ``tlcm`` for KSampler; its denoise < 1 asks for ``int(steps/denoise)`` and keeps the tail."""
    return tlcm_sigmas(model_sampling, steps)
