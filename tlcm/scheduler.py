"""``TLCMScheduler``: the official TLCM sampler as a diffusers scheduler.

Drop-in for ``StableDiffusionXLPipeline`` (and its img2img / ControlNet variants)::

    pipe.scheduler = TLCMScheduler.from_config(pipe.scheduler.config)
    pipe(prompt, num_inference_steps=4, guidance_scale=0)     # 999, 749, 499, 124

Each ``step`` turns the model output into x̂0 and re-noises it to the next milestone with fresh noise
(``eta=1``, the official loop) or with the model's own ε̂ (``eta=0``, deterministic DDIM jump); the last
step returns x̂0 itself, which the pipeline decodes. The math is :func:`tlcm.sampling.tlcm_step`.

Zero terminal SNR (``rescale_betas_zero_snr``, v-prediction finetunes): ᾱ = 0 at t = 999, the first
milestone. There x̂0 = −v for a v-prediction model (√ᾱ·z − √(1−ᾱ)·v at ᾱ = 0) and the step is well
defined; an ε-prediction model cannot give x̂0 there (it divides by √ᾱ), which is an error naming the
fix. ``timestep_spacing`` and ``steps_offset`` of the config handed over are ignored: TLCM's timesteps
are its milestone table, whatever spacing the base model's scheduler used.

``eta`` is a config value, not a ``step`` argument, on purpose: diffusers pipelines pass their own
``eta=0.0`` to any scheduler whose ``step`` accepts one, which would silently turn TLCM deterministic.

Partial denoise: ``set_timesteps(n, strength=s)`` applies TLCM's rule (``tlcm.schedules``: the
``int(n/s)``-step schedule's last n steps). The diffusers img2img pipelines do not pass ``strength`` to
the scheduler; they keep the last ``int(n·s)`` of the n-step list instead — pass ``timesteps=`` (and
``strength=1``) to a pipeline to get TLCM's rule there, as ``tlcm.generate`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .errors import SAMPLING_HINT, check_finite
from .sampling import PREDICTION_TYPES, tlcm_step
from .schedules import (NUM_TRAIN_TIMESTEPS, OFFICIAL_NUM_SEGMENTS, SCHEDULES, SDXL_BETA_END, SDXL_BETA_SCHEDULE,
                        SDXL_BETA_START, make_alphas_cumprod, schedule_timesteps)


@dataclass
class TLCMSchedulerOutput(BaseOutput):
    """``prev_sample``: input of the next step (x̂0 after the last one); ``denoised``: this step's x̂0."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor


class StepIndexMixin:
    """The step bookkeeping diffusers pipelines expect of a scheduler: ``step_index`` (the next step's position
    in ``timesteps``) and ``begin_index`` (set by img2img pipelines that start part-way through them)."""

    _step_index: int | None = None
    _begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index


class TLCMScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """Multistep latent consistency sampling on TLCM's milestone grid (see module docstring).

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr:
            the base model's DDPM noise schedule (SDXL's by default; read from the pipeline's scheduler
            config by ``from_config``).
        prediction_type: ``epsilon`` (SDXL), ``v_prediction`` or ``sample``.
        schedule: ``tlcm`` (official milestone subsets) or ``uniform`` (the paper's Alg. 2 grid).
        num_segments: milestones grid size M (8 for the released LoRA).
        eta: stochasticity in [0, 1]; 1 = official fresh noise at every milestone, 0 = deterministic.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = SDXL_BETA_START,
                 beta_end: float = SDXL_BETA_END, beta_schedule: str = SDXL_BETA_SCHEDULE, trained_betas: Sequence[float] | None = None,
                 prediction_type: str = "epsilon", schedule: str = "tlcm",
                 num_segments: int = OFFICIAL_NUM_SEGMENTS, eta: float = 1.0, rescale_betas_zero_snr: bool = False):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta!r}")
        alphas_cumprod = make_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                             rescale_betas_zero_snr)
        self.betas = (1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])).to(torch.float32)
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)   # until set_timesteps, as diffusers
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """VP models take the latent as is."""
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None, strength: float = 1.0) -> None:
        """Milestone timesteps for ``num_inference_steps`` (with TLCM's ``strength`` rule), or explicit ones."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps or timesteps")
        n_train = self.config.num_train_timesteps
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            if not timesteps or any(not 0 <= t < n_train for t in timesteps):
                raise ValueError(f"timesteps must be a non-empty list in [0, {n_train - 1}], got {timesteps}")
            if any(a <= b for a, b in zip(timesteps, timesteps[1:])):
                raise ValueError(f"timesteps must be strictly decreasing, got {timesteps}")
        else:
            timesteps = schedule_timesteps(num_inference_steps, self.config.schedule, denoise=strength,
                                           num_segments=self.config.num_segments, num_train_timesteps=n_train)
        self.timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
        self.num_inference_steps = len(timesteps)
        self._step_index = None
        self._begin_index = None

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep the step from ``timestep`` lands on (-1 after the last one), as diffusers schedulers."""
        index = self.index_for_timestep(timestep)
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else torch.tensor(-1)

    def index_for_timestep(self, timestep: int | torch.Tensor) -> int:
        matches = (self.timesteps == timestep).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {int(timestep)} is not in this scheduler's timesteps "
                             f"{self.timesteps.tolist()}; call set_timesteps first")
        return int(matches[0])

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> TLCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One TLCM step from ``timestep`` to the next milestone (or to x̂0 after the last one).

        A NaN/Inf result raises ``tlcm.errors.NonFiniteError``: the pipeline would decode it to a black image.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        i = self._step_index
        if i >= len(self.timesteps):
            raise ValueError(f"step called {i + 1} times for {len(self.timesteps)} timesteps")
        alphas = self.alphas_cumprod.to(device=sample.device)
        alpha_t = alphas[self.timesteps[i]].to(sample.dtype)
        if float(alpha_t) == 0.0 and self.config.prediction_type == "epsilon":
            raise ValueError(f"timestep {int(self.timesteps[i])} has ᾱ = 0 (zero terminal SNR schedule), where an "
                             "epsilon-prediction model cannot give x̂0; zero-SNR schedules need a v-prediction "
                             "model (prediction_type='v_prediction'), or drop rescale_betas_zero_snr")
        is_last = i == len(self.timesteps) - 1
        alpha_next = None if is_last else alphas[self.timesteps[i + 1]].to(sample.dtype)
        noise = None
        if not is_last and self.config.eta > 0:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
        prev_sample, denoised = tlcm_step(model_output, sample, alpha_t, alpha_next, noise,
                                          eta=self.config.eta, prediction_type=self.config.prediction_type)
        check_finite(prev_sample, f"the latent after TLCM step {i + 1} of {len(self.timesteps)}", SAMPLING_HINT)
        self._step_index = i + 1
        if not return_dict:
            return prev_sample, denoised
        return TLCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(z_t | x0), as ``DDPMScheduler.add_noise``."""
        alphas = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        a = alphas[timesteps.to(original_samples.device)].flatten()
        while a.ndim < original_samples.ndim:
            a = a.unsqueeze(-1)
        return a.sqrt() * original_samples + (1.0 - a).sqrt() * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
