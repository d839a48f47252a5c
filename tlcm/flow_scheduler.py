"""``TLCMFlowMatchScheduler``: the official FLUX TLCM sampler as a diffusers scheduler.

Drop-in for ``FluxPipeline`` (and ``FluxImg2ImgPipeline``), as the official README uses it::

    pipe.scheduler = TLCMFlowMatchScheduler.from_config(pipe.scheduler.config)
    pipe(prompt, num_inference_steps=4, guidance_scale=7)   # guidance embedding, no CFG

Flow matching: x_σ = (1 − σ)·x0 + σ·ε and the transformer predicts the velocity v = ε − x0. Each ``step``
takes x̂0 = x − σ·v and re-noises it to the next sigma with fresh noise, (1 − σ_next)·x̂0 + σ_next·ξ
(:func:`tlcm.sampling.renoise_flow`); the last sigma is 0, so the last step returns x̂0 itself.

Sigmas are FLUX's: ``FluxPipeline`` passes linspace(1, 1/n, n) and ``mu`` from the image token count, and
with ``use_dynamic_shifting`` (FLUX.1-dev) they become e^mu / (e^mu + 1/σ − 1); without it, the static
shift·σ / (1 + (shift − 1)·σ). ``FluxPipeline`` calls ``step`` without a generator, so fresh noise comes from
torch's global RNG, as in the official scheduler; :meth:`set_noise_generator` seeds it per run instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .errors import SAMPLING_HINT, check_finite
from .sampling import renoise_flow
from .schedules import flux_time_shift
from .scheduler import StepIndexMixin


@dataclass
class TLCMFlowMatchSchedulerOutput(BaseOutput):
    """``prev_sample``: input of the next step (x̂0 after the last one); ``denoised``: this step's x̂0."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor


class TLCMFlowMatchScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """TLCM sampling for flow-matching transformers (see module docstring).

    Args: as ``FlowMatchEulerDiscreteScheduler``'s keys that shape the sigmas; ``from_config`` reads them
    from FLUX's scheduler config (``use_dynamic_shifting=True``, mu from 256 to 4096 tokens → 0.5 to 1.15).
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler"]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: float = 0.5, max_shift: float = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096):
        # The training grid, as FlowMatchEulerDiscreteScheduler: σ = 1 … 1/T, static shift applied here only
        # when there is no dynamic one; set_timesteps without sigmas spans its ends.
        sigmas = torch.arange(num_train_timesteps, 0, -1, dtype=torch.float64) / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = self._static_shift(sigmas)
        self.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).float()
        self.timesteps = (sigmas * num_train_timesteps).float()
        self.sigma_max, self.sigma_min = float(sigmas[0]), float(sigmas[-1])
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self._noise_generator: torch.Generator | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def set_noise_generator(self, generator: torch.Generator | None) -> None:
        """Generator for the fresh noise when ``step`` gets none (``FluxPipeline`` passes none)."""
        self._noise_generator = generator

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        return sample

    def _static_shift(self, sigmas: torch.Tensor) -> torch.Tensor:
        shift = self.config.shift
        return shift * sigmas / (1 + (shift - 1) * sigmas)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None) -> None:
        """Shifted sigmas (then 0) from ``sigmas`` (``FluxPipeline``: linspace(1, 1/n, n)) or, without them,
        ``num_inference_steps`` evenly from the training grid's ends; ``mu`` is required with dynamic shifting."""
        if self.config.use_dynamic_shifting and mu is None:
            raise ValueError("use_dynamic_shifting needs mu (FluxPipeline computes it from the image size)")
        if sigmas is None:
            if not num_inference_steps or num_inference_steps < 1:
                raise ValueError(f"pass sigmas or num_inference_steps >= 1, got {num_inference_steps!r}")
            sigmas = torch.linspace(self.sigma_max, self.sigma_min, num_inference_steps, dtype=torch.float64)
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
        if len(sigmas) == 0 or not bool(((sigmas > 0) & (sigmas <= 1)).all()):
            raise ValueError(f"sigmas must be a non-empty list in (0, 1], got {sigmas.tolist()}")
        if self.config.use_dynamic_shifting:     # exponential time shift with exponent 1
            sigmas = flux_time_shift(sigmas, mu)
        else:
            sigmas = self._static_shift(sigmas)
        sigmas = sigmas.float().to(device)
        self.timesteps = sigmas * self.config.num_train_timesteps
        self.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        self.num_inference_steps = len(sigmas)
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(self, timestep: float | torch.Tensor,
                           schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep``; of a repeated one, the second (diffusers' rule for restarting mid-way)."""
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = (schedule_timesteps == timestep).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in this scheduler's timesteps; "
                             "call set_timesteps first")
        return int(matches[1 if len(matches) > 1 else 0])

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process (1 − σ)·x0 + σ·noise at ``timestep``, as img2img pipelines start."""
        if self._begin_index is None:
            schedule = self.timesteps.to(sample.device)
            indices = [self.index_for_timestep(t, schedule) for t in timestep.to(sample.device)]
        else:
            start = self._step_index if self._step_index is not None else self._begin_index
            indices = [start] * timestep.shape[0]
        sigma = self.sigmas.to(device=sample.device, dtype=sample.dtype)[indices].flatten()
        while sigma.ndim < sample.ndim:
            sigma = sigma.unsqueeze(-1)
        return sigma * noise + (1.0 - sigma) * sample

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> TLCMFlowMatchSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One TLCM step from ``timestep`` to the next sigma (or to x̂0 after the last one).

        Computed in float32 and returned in the model's dtype, as the official scheduler. Noise is drawn at
        every step, the last included, so a shared generator advances exactly as there.
        A NaN/Inf result raises ``tlcm.errors.NonFiniteError``: the pipeline would decode it to a black image.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps, not an integer index")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError(f"step called {i + 1} times for {self.num_inference_steps} timesteps")
        sigmas = self.sigmas.to(model_output.device)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = sample.to(torch.float32) - sigma * model_output
        generator = generator if generator is not None else self._noise_generator
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        prev_sample = renoise_flow(denoised, sigma_next, noise).to(model_output.dtype)
        denoised = denoised.to(model_output.dtype)
        check_finite(prev_sample, f"the latent after TLCM step {i + 1} of {self.num_inference_steps}", SAMPLING_HINT)
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, denoised
        return TLCMFlowMatchSchedulerOutput(prev_sample=prev_sample, denoised=denoised)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
