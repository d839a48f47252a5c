"""The TLCM sampling step, written once and used in timestep (VP) space and k-diffusion sigma (VE) space.

At each milestone the TLCM LoRA predicts the clean latent x̂0; the official sampler then re-noises x̂0 to
the next milestone with *fresh* noise (``DDPMScheduler.add_noise``) and finally returns the last x̂0.
``eta`` blends that fresh noise with the model's own noise estimate ε̂:

    x_next = x̂0 + σ_next · (√(1 − η²) · ε̂ + η · ξ)            (VE, ξ ~ N(0, I))

η = 1 is the official sampler (k-diffusion/ComfyUI ``lcm``), η = 0 the paper's deterministic DDIM jump
g_θ to the next milestone (k-diffusion ``euler``); values between interpolate like an ancestral step with
σ_up = η·σ_next. In VP space z = √ᾱ · x_VE, so the same function serves both.

Flow-matching models (FLUX) have their own step and loop, :func:`renoise_flow` and :func:`sample_tlcm_flow`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import trange

from .errors import SAMPLING_HINT, check_finite

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_eta(eta: float) -> None:
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta (stochasticity) must be in [0, 1], got {eta!r}")


def renoise(denoised: torch.Tensor, eps: torch.Tensor | None, sigma_next: torch.Tensor | float,
            noise: torch.Tensor | None, eta: float = 1.0) -> torch.Tensor:
    """The TLCM step in VE space: move the prediction x̂0 to noise level ``sigma_next``.

    ``eps`` may be None when ``eta == 1``; ``noise`` may be None when ``eta == 0`` or ``sigma_next == 0``.
    """
    _check_eta(eta)
    if float(sigma_next) == 0.0:
        return denoised
    direction = 0.0
    if eta < 1.0:
        if eps is None:
            raise ValueError("eps is required when eta < 1")
        direction = (1.0 - eta * eta) ** 0.5 * eps
    if eta > 0.0:
        if noise is None:
            raise ValueError("noise is required when eta > 0")
        direction = direction + eta * noise
    return denoised + sigma_next * direction


def split_model_output(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor,
                       prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from a VP model output: z = √ᾱ·x0 + √(1−ᾱ)·ε."""
    a = alpha_prod_t.sqrt()
    s = (1.0 - alpha_prod_t).sqrt()
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - s * eps) / a
    elif prediction_type == "v_prediction":
        x0 = a * sample - s * model_output
        eps = s * sample + a * model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - a * x0) / s
    else:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    return x0, eps


def tlcm_step(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor,
              alpha_prod_next: torch.Tensor | None, noise: torch.Tensor | None, eta: float = 1.0,
              prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """One TLCM step in timestep (VP) space. Returns (next sample, x̂0); ``alpha_prod_next`` None = last step."""
    x0, eps = split_model_output(model_output, sample, alpha_prod_t, prediction_type)
    if alpha_prod_next is None:
        return x0, x0
    sigma_next = ((1.0 - alpha_prod_next) / alpha_prod_next).sqrt()
    return alpha_prod_next.sqrt() * renoise(x0, eps, sigma_next, noise, eta), x0


def renoise_flow(denoised: torch.Tensor, sigma_next: torch.Tensor | float,
                 noise: torch.Tensor | None) -> torch.Tensor:
    """The TLCM step for flow-matching models (FLUX), x_σ = (1 − σ)·x0 + σ·ε: move x̂0 to ``sigma_next``
    with fresh noise, x_next = (1 − σ_next)·x̂0 + σ_next·ξ. ``sigma_next == 0`` returns x̂0 itself.

    Not :func:`renoise`: in flow space the clean latent is scaled by (1 − σ) and σ ends at 1, so the VE step
    does not carry over. A k-diffusion flow host's denoiser already returns x̂0 = x − σ·v.
    """
    if float(sigma_next) == 0.0:
        return denoised
    if noise is None:
        raise ValueError("noise is required when sigma_next > 0")
    return (1.0 - sigma_next) * denoised + sigma_next * noise


def default_noise_sampler(x: torch.Tensor, generator: torch.Generator | None = None) -> NoiseSampler:
    """k-diffusion noise-sampler contract: ``f(sigma, sigma_next) -> N(0, I)`` shaped like ``x``."""
    def sample_noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return sample_noise


def _sample(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
            extra_args: dict[str, Any] | None, callback: Callable[[dict], None] | None, disable: bool | None,
            step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The k-diffusion loop both samplers share: x̂0 from the model, the callback, ``step(x, x̂0, σ, σ_next)``,
    the NaN/Inf check (hosts show the error instead of a black image)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = step(x, denoised, sigma, sigma_next)
        check_finite(x, f"the latent after TLCM step {i + 1} of {len(sigmas) - 1}", SAMPLING_HINT)
    return x


@torch.no_grad()
def sample_tlcm(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                extra_args: dict[str, Any] | None = None, callback: Callable[[dict], None] | None = None,
                disable: bool | None = None, noise_sampler: NoiseSampler | None = None,
                eta: float = 1.0) -> torch.Tensor:
    """TLCM sampler with the k-diffusion contract: ``model(x, sigma, **extra_args)`` returns x̂0.

    ``x`` is the start latent already scaled to ``sigmas[0]`` (the host's job, as for every k-diffusion
    sampler); ``sigmas`` ends in 0, so the result is the last x̂0, as in the official script. A NaN/Inf
    latent raises ``NonFiniteError`` at the step it appears (hosts show the error instead of a black image).
    """
    _check_eta(eta)
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler

    def step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        eps = (x - denoised) / sigma if eta < 1.0 else None
        noise = noise_sampler(sigma, sigma_next) if eta > 0.0 and sigma_next > 0 else None
        return renoise(denoised, eps, sigma_next, noise, eta)

    return _sample(model, x, sigmas, extra_args, callback, disable, step)


@torch.no_grad()
def sample_tlcm_flow(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                     extra_args: dict[str, Any] | None = None, callback: Callable[[dict], None] | None = None,
                     disable: bool | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """:func:`sample_tlcm` for flow-matching models (FLUX): ``model(x, sigma)`` returns x̂0, ``sigmas`` run
    from about 1 to 0, ``x`` starts as the host scaled it (pure noise at σ = 1). Each step is
    :func:`renoise_flow`; the result is the last x̂0, as in the official FLUX scheduler.
    """
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler

    def step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return renoise_flow(denoised, sigma_next, noise_sampler(sigma, sigma_next) if sigma_next > 0 else None)

    return _sample(model, x, sigmas, extra_args, callback, disable, step)
