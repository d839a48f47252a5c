"""TLCM milestone schedules: which timesteps (and k-diffusion sigmas) a TLCM sampler visits.

TLCM splits the 1000 training timesteps into M equal segments; the segment boundaries are the
*milestones* the LoRA was distilled to predict from. The official SDXL inference script
(`OPPO-Mente-Lab/TLCM:inference.py`) builds the grid with ``torch.linspace(999, 0, 9, dtype=int)``
and, for N steps, visits a fixed subset of it (``OFFICIAL_STEP_INDICES``).

Rules for requests the official table does not cover (documented in the README, never silent):

* **N > 8 steps** (official schedule): the grid is refined to N equal segments and every boundary but
  0 is visited, i.e. ``milestone_grid(N)[:N]``. This is the same rule the table follows at N = 8, so it
  continues the table smoothly; hosts reach it through partial denoise (see below).
* **Partial denoise** (img2img strength, hires-fix second pass) with ``steps`` and ``denoise`` < 1:
  the N = ``int(steps / denoise)`` step schedule is built and its last ``steps`` timesteps are kept.
  This is exactly what ComfyUI's KSampler and A1111's hires/img2img "fix steps" do with any scheduler,
  so the core, ComfyUI and the WebUI agree: 4 steps at denoise 0.5 -> 499, 374, 249, 124.
* N < 1, non-integers, ``denoise`` outside (0, 1] -> ``ValueError``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000
OFFICIAL_NUM_SEGMENTS = 8

# Grid indices the official inference script visits for 1..8 steps (it appends index 8, t = 0).
OFFICIAL_STEP_INDICES: dict[int, tuple[int, ...]] = {
    1: (0,),
    2: (0, 4),
    3: (0, 4, 7),
    4: (0, 2, 4, 7),
    5: (0, 2, 4, 6, 7),
    6: (0, 2, 4, 5, 6, 7),
    7: (0, 2, 3, 4, 5, 6, 7),
    8: (0, 1, 2, 3, 4, 5, 6, 7),
}

MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, OFFICIAL_NUM_SEGMENTS, 4
"""The step counts every UI offers (ComfyUI widget, WebUI slider, trainer app, CLI, trainer samples): the
official table. 4 is the paper's default; schedules past 8 steps arise only inside partial denoise."""
STEP_RANGE_TEXT = f"{MIN_STEPS}-{MAX_STEPS} (the official TLCM milestone table; {DEFAULT_STEPS} is the paper's default)"

SCHEDULES = ("tlcm", "uniform")
"""``tlcm``: the official milestone subsets; ``uniform``: the paper's Alg. 2 q-step student grid."""


def check_step_count(steps: object, what: str = "steps") -> int:
    """``steps`` if it is a whole number in the range every UI offers; else a ``ValueError`` saying the range."""
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps != int(steps):
        raise ValueError(f"{what} must be a whole number, got {steps!r}")
    if not MIN_STEPS <= int(steps) <= MAX_STEPS:
        raise ValueError(f"{what} must be {STEP_RANGE_TEXT}, got {int(steps)}")
    return int(steps)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an integer, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def milestone_grid(num_segments: int = OFFICIAL_NUM_SEGMENTS,
                   num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Boundaries of ``num_segments`` equal segments, from ``T - 1`` down to 0 (``num_segments + 1`` ints).

    Integer truncation as in ``torch.linspace(T - 1, 0, M + 1, dtype=int)``: 999, 874, ..., 124, 0 for M = 8.
    """
    if isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 1:
        raise ValueError(f"num_segments must be an integer >= 1, got {num_segments!r}")
    if num_segments >= num_train_timesteps:
        raise ValueError(f"num_segments ({num_segments}) must be smaller than num_train_timesteps "
                         f"({num_train_timesteps})")
    top = num_train_timesteps - 1
    return [int(top - top * i / num_segments) for i in range(num_segments + 1)]


def _spread_indices(steps: int, num_segments: int) -> list[int]:
    """N of the M milestone indices, first and last included, evenly spread (grids with no official table).

    N <= M keeps the spacing >= 1, so the rounded indices are distinct.
    """
    if steps == 1:
        return [0]
    return [round(i * (num_segments - 1) / (steps - 1)) for i in range(steps)]


def tlcm_timesteps(steps: int, *, num_segments: int = OFFICIAL_NUM_SEGMENTS,
                   num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """UNet timesteps of the TLCM milestone schedule for ``steps`` steps (t = 0 not included).

    M = 8, N <= 8: the official table. N > M: the N-segment grid (module docstring). Other M, N <= M:
    N milestones evenly spread over the M-segment grid, first and last always included.
    """
    _check_steps(steps)
    if steps > num_segments:
        return milestone_grid(steps, num_train_timesteps)[:steps]
    grid = milestone_grid(num_segments, num_train_timesteps)
    if num_segments == OFFICIAL_NUM_SEGMENTS:
        indices = OFFICIAL_STEP_INDICES[steps]
    else:
        indices = _spread_indices(steps, num_segments)
    return [grid[i] for i in indices]


def uniform_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The paper's uniform q-step grid (Alg. 2), ``T - T/N * i - 1`` rounded: 999, 749, 499, 249 for N = 4.

    Identical to diffusers' ``timestep_spacing="trailing"``.
    """
    _check_steps(steps)
    if steps > num_train_timesteps:
        raise ValueError(f"steps ({steps}) cannot exceed num_train_timesteps ({num_train_timesteps})")
    return [int(round(num_train_timesteps - num_train_timesteps / steps * i)) - 1 for i in range(steps)]


def _partial_total(steps: int, denoise: float) -> int:
    """The length of the schedule whose last ``steps`` entries a partial ``denoise`` runs."""
    _check_steps(steps)
    if not isinstance(denoise, (int, float)) or math.isnan(denoise) or not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r}")
    return steps if denoise >= 1.0 else int(steps / denoise)


def flow_times(steps: int, *, denoise: float = 1.0) -> list[float]:
    """The TLCM-FLUX schedule before the model's shift: ``FluxPipeline``'s linspace(1, 1/n, n), which the
    official FLUX example runs; a partial ``denoise`` keeps the last ``steps`` of the int(steps/denoise)-step
    list, as for SDXL. A flow host maps each t to its own shifted sigma, then appends 0."""
    total = _partial_total(steps, denoise)
    return [1.0 - i / total for i in range(total)][-steps:]


def flux_time_shift(t: torch.Tensor | float, mu: float) -> torch.Tensor | float:
    """FLUX's resolution-dependent shift of a time t in (0, 1]: e^mu / (e^mu + 1/t − 1) (mu = 1.15 at 1024²)."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def schedule_timesteps(steps: int, schedule: str = "tlcm", *, denoise: float = 1.0,
                       num_segments: int = OFFICIAL_NUM_SEGMENTS,
                       num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Timesteps for ``steps`` steps of ``schedule``, honouring partial ``denoise`` (module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    total = _partial_total(steps, denoise)
    if schedule == "tlcm":
        full = tlcm_timesteps(total, num_segments=num_segments, num_train_timesteps=num_train_timesteps)
    else:
        full = uniform_timesteps(total, num_train_timesteps)
    return full[-steps:]


BETA_SCHEDULES = ("scaled_linear", "linear")
SDXL_BETA_START, SDXL_BETA_END, SDXL_BETA_SCHEDULE = 0.00085, 0.012, "scaled_linear"
"""SD/SDXL's DDPM noise schedule (``scheduler_config.json``): the default wherever a config is silent."""


def make_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = SDXL_BETA_START,
                        beta_end: float = SDXL_BETA_END, beta_schedule: str = SDXL_BETA_SCHEDULE,
                        trained_betas: Sequence[float] | None = None,
                        rescale_betas_zero_snr: bool = False) -> torch.Tensor:
    """ᾱ_t of a DDPM beta schedule in float64 (SD/SDXL ``scaled_linear`` by default); callers cast as needed.

    ``rescale_betas_zero_snr`` (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
    flawed", Alg. 1; the key v-prediction finetunes such as NoobAI-XL set): √ᾱ shifted so that the last
    step is pure noise (ᾱ_T = 0, zero terminal SNR) and scaled so that the first keeps its value."""
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)} (or pass trained_betas), "
                         f"got {beta_schedule!r}")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if not rescale_betas_zero_snr:
        return alphas_cumprod
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """ᾱ_t of a diffusers scheduler config (its keys, SDXL's values where it is silent), float64."""
    return make_alphas_cumprod(config.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS),
                               config.get("beta_start", SDXL_BETA_START), config.get("beta_end", SDXL_BETA_END),
                               config.get("beta_schedule", SDXL_BETA_SCHEDULE), config.get("trained_betas"),
                               bool(config.get("rescale_betas_zero_snr", False)))


def timesteps_to_sigmas(timesteps: Sequence[int], alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """k-diffusion sigmas σ_t = √((1 − ᾱ_t)/ᾱ_t) for ``timesteps``, with the trailing 0 appended (float32)."""
    if alphas_cumprod is None:
        alphas_cumprod = make_alphas_cumprod()
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    index = torch.as_tensor(list(timesteps), dtype=torch.long)
    if index.numel() == 0:
        raise ValueError("timesteps must not be empty")
    if index.min() < 0 or index.max() >= alphas_cumprod.numel():
        raise ValueError(f"timesteps must lie in [0, {alphas_cumprod.numel() - 1}], got {index.tolist()}")
    a = alphas_cumprod[index]
    sigmas = ((1.0 - a) / a).sqrt()
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def tlcm_sigmas(steps: int, schedule: str = "tlcm", *, denoise: float = 1.0,
                alphas_cumprod: torch.Tensor | None = None,
                num_segments: int = OFFICIAL_NUM_SEGMENTS) -> torch.Tensor:
    """``steps + 1`` k-diffusion sigmas (ending in 0) for the schedule; SDXL ᾱ by default."""
    n_train = NUM_TRAIN_TIMESTEPS if alphas_cumprod is None else len(alphas_cumprod)
    timesteps = schedule_timesteps(steps, schedule, denoise=denoise, num_segments=num_segments,
                                   num_train_timesteps=n_train)
    return timesteps_to_sigmas(timesteps, alphas_cumprod)
