"""Written-out references for host tests: TLCM timesteps, sigmas and the official sampling loop.

Host tests (ComfyUI, WebUI, diffusers, ``tlcm.generate``) compare against what is here, never against
``tlcm.schedules`` / ``tlcm.sampling``, which the code under test wraps: a bug there would otherwise pass
on both sides. Nothing here imports ``tlcm``. ``tests/test_reference_tlcm.py`` pins these helpers to the
README's numbers, so the references are checked too.

* Timesteps: the README table ("The sampler, exactly") for 1-8 steps, hand-derived partial-denoise tables
  (``PARTIAL_DENOISE``; many are ratios where ``int`` and ``round`` disagree), and the README rules written
  out in exact integer arithmetic (``full_schedule``, ``partial_denoise``).
* SDXL ᾱ: scaled_linear betas 0.00085 -> 0.012 over 1000 steps (``SDXL_ALPHAS_CUMPROD``).
* The sampler: ``reference_loop`` in VP space, as the official ``inference.py``: x̂0 at each milestone,
  re-noised to the next one with fresh noise (eta 1), or the deterministic DDIM jump (eta 0, the model's
  own ε̂ carried to the next milestone); the last x̂0 is the result.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import torch

NUM_TRAIN_TIMESTEPS = 1000

# ----------------------------------------------------------------------------------------- timesteps

# README "The sampler, exactly": the official script's subsets of the 8-segment grid
# linspace(999, 0, 9) cast to int = 999, 874, 749, 624, 499, 374, 249, 124, (0).
README_TABLE: dict[int, list[int]] = {
    1: [999],
    2: [999, 499],
    3: [999, 499, 124],
    4: [999, 749, 499, 124],
    5: [999, 749, 499, 249, 124],
    6: [999, 749, 499, 374, 249, 124],
    7: [999, 749, 624, 499, 374, 249, 124],
    8: [999, 874, 749, 624, 499, 374, 249, 124],
}

# README table, k-diffusion sigma column (4 decimals).
README_SIGMAS: dict[int, float] = {999: 14.6147, 874: 7.2974, 749: 4.0817, 624: 2.4925, 499: 1.6129,
                                   374: 1.0690, 249: 0.6932, 124: 0.3977}

# schedule="uniform" (the paper's Alg. 2, diffusers "trailing"): round(1000 - 1000·i/N) - 1, by hand:
# N=3: 1000/3 = 333.33 -> 999, round(666.67)-1 = 666, round(333.33)-1 = 332
# N=5: 999, 799, 599, 399, 199
# N=6: 1000/6 = 166.67 -> 999, 833-1, 667-1, 500-1, 333-1, 167-1
# N=7: 1000/7 = 142.857 -> 999, round(857.14)-1, round(714.29)-1, round(571.43)-1, round(428.57)-1,
#      round(285.71)-1, round(142.86)-1
UNIFORM_TABLE: dict[int, list[int]] = {
    1: [999],
    2: [999, 499],
    3: [999, 666, 332],
    4: [999, 749, 499, 249],
    5: [999, 799, 599, 399, 199],
    6: [999, 832, 666, 499, 332, 166],
    7: [999, 856, 713, 570, 428, 285, 142],
    8: [999, 874, 749, 624, 499, 374, 249, 124],
}

# Partial denoise (README): build the int(steps / denoise)-step schedule, keep its last `steps` timesteps.
# Each entry is worked out by hand; "round:" is what round(steps / denoise) would give instead, so a test
# over these entries tells `int` from `round`. N-step grids for N > 8: int(999 - 999·i/N), i < N.
PARTIAL_DENOISE: dict[tuple[int, float, str], list[int]] = {
    # 4/0.5 = 8 exactly -> README 8, last 4 (the README's example)
    (4, 0.5, "tlcm"): [499, 374, 249, 124],
    # 4/0.45 = 8.89 -> int 8 -> README 8, last 4.
    #   round: 9 -> 9-grid 999-111i = 999, 888, ..., 111 -> last 4 = 444, 333, 222, 111
    (4, 0.45, "tlcm"): [499, 374, 249, 124],
    # 4/0.7 = 5.71 -> int 5 -> README 5 = 999, 749, 499, 249, 124 -> last 4.
    #   round: 6 -> README 6, last 4 = 499, 374, 249, 124
    (4, 0.7, "tlcm"): [749, 499, 249, 124],
    # 5/0.75 = 6.67 -> int 6 -> README 6 = 999, 749, 499, 374, 249, 124 -> last 5.
    #   round: 7 -> 624, 499, 374, 249, 124
    (5, 0.75, "tlcm"): [749, 499, 374, 249, 124],
    # 8/0.9 = 8.89 -> int 8 -> the whole README 8 row.
    #   round: 9 -> 9-grid without 999 = 888, 777, 666, 555, 444, 333, 222, 111
    (8, 0.9, "tlcm"): [999, 874, 749, 624, 499, 374, 249, 124],
    # 1/0.35 = 2.86 -> int 2 -> README 2, last 1.   round: 3 -> 124
    (1, 0.35, "tlcm"): [499],
    # 6/0.62 = 9.68 -> int 9 -> 9-grid 999-111i (i < 9), last 6 = i 3..8.
    #   round: 10 -> 10-grid int(999-99.9i), i 4..9 = 599, 499, 399, 299, 199, 99
    (6, 0.62, "tlcm"): [666, 555, 444, 333, 222, 111],
    # 2/0.12 = 16.67 -> int 16 -> 16-grid 999-62.4375i: i=14 -> 124.875, i=15 -> 62.4375 -> 124, 62.
    #   round: 17 -> 999-58.765i: i=15 -> 117.53, i=16 -> 58.76 -> 117, 58
    (2, 0.12, "tlcm"): [124, 62],
    # 4/0.3 = 13.33 -> 13 (int and round agree) -> 13-grid 999-76.846i, i 9..12:
    #   307.38, 230.54, 153.69, 76.85 -> 307, 230, 153, 76
    (4, 0.3, "tlcm"): [307, 230, 153, 76],
    # uniform, 4/0.45 -> int 8 -> UNIFORM_TABLE[8], last 4.
    #   round: 9 -> round(1000-111.11i)-1, i 5..8 = 443, 332, 221, 110
    (4, 0.45, "uniform"): [499, 374, 249, 124],
    # uniform, 4/0.7 -> int 5 -> UNIFORM_TABLE[5], last 4.   round: 6 -> 666, 499, 332, 166
    (4, 0.7, "uniform"): [799, 599, 399, 199],
}


def linspace_grid(n: int) -> list[int]:
    """README grid of n segments, ``linspace(999, 0, n + 1)`` cast to int, in exact integer arithmetic:
    999 - 999·i/n truncated = floor(999·(n - i)/n) (the value is >= 0)."""
    return [999 * (n - i) // n for i in range(n + 1)]


def full_schedule(n: int, schedule: str = "tlcm") -> list[int]:
    """README rules for n steps at denoise 1: the table up to 8, then every grid boundary but 0."""
    if schedule == "uniform":   # round(1000 - 1000·i/n) - 1 with Python's round-half-even, exactly
        return [round(Fraction(1000 * (n - i), n)) - 1 for i in range(n)]
    assert schedule == "tlcm", schedule
    return README_TABLE[n] if n <= 8 else linspace_grid(n)[:n]


def partial_denoise(steps: int, denoise: float, schedule: str = "tlcm") -> list[int]:
    """README partial-denoise rule: the last ``steps`` of the int(steps/denoise)-step schedule."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    return full_schedule(total, schedule)[-steps:]


# ----------------------------------------------------------------------------------------- noise schedule

def sdxl_alphas_cumprod() -> torch.Tensor:
    """SDXL's ᾱ_t in float64: betas = linspace(√0.00085, √0.012, 1000)², ᾱ = cumprod(1 - betas)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


SDXL_ALPHAS_CUMPROD = sdxl_alphas_cumprod()


def sigmas_for(timesteps: list[int], alphas_cumprod: torch.Tensor = SDXL_ALPHAS_CUMPROD) -> torch.Tensor:
    """k-diffusion sigmas √((1 - ᾱ)/ᾱ) at ``timesteps``, then 0 (float32)."""
    a = alphas_cumprod.double()[torch.tensor(timesteps)]
    return torch.cat([((1 - a) / a).sqrt(), a.new_zeros(1)]).float()


# ----------------------------------------------------------------------------------------- noise sources

def seeded_normal(seed: int, shape) -> Callable[[], torch.Tensor]:
    """A noise source: each call draws the next N(0, I) tensor of ``shape`` from ``Generator(seed)``."""
    generator = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(tuple(shape), generator=generator)


def forward_diffuse(x0: torch.Tensor, noise: torch.Tensor, t: int,
                    alphas_cumprod: torch.Tensor = SDXL_ALPHAS_CUMPROD) -> torch.Tensor:
    """q(z_t | x0) = √ᾱ_t·x0 + √(1 - ᾱ_t)·ξ (DDPMScheduler.add_noise)."""
    a = float(alphas_cumprod[t])
    return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise


# ----------------------------------------------------------------------------------------- the sampler

def reference_loop(eps_fn: Callable[[torch.Tensor, int], torch.Tensor], z: torch.Tensor, timesteps: list[int],
                   *, eta: float, noise: Callable[[], torch.Tensor] | None = None,
                   alphas_cumprod: torch.Tensor = SDXL_ALPHAS_CUMPROD, trace: list | None = None) -> torch.Tensor:
    """The official TLCM loop in VP space; returns the last x̂0.

    ``eps_fn(z, t)``: the model's ε̂ at integer timestep t. ``z``: the VP latent at ``timesteps[0]``.
    eta 1 (official): x̂0 re-noised to the next milestone with a fresh draw of ``noise()``.
    eta 0 (DDIM jump): x̂0 moved to the next milestone along the model's own ε̂ (no fresh noise).
    ``trace``, if given, collects each step's x̂0.
    """
    if eta not in (0.0, 1.0):
        raise ValueError("the reference covers eta 1 (official) and eta 0 (DDIM jump)")
    for i, t in enumerate(timesteps):
        a = float(alphas_cumprod[t])
        eps = eps_fn(z, t)
        x0 = (z - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
        if trace is not None:
            trace.append(x0)
        if i + 1 == len(timesteps):
            return x0
        a_next = float(alphas_cumprod[timesteps[i + 1]])
        direction = noise() if eta == 1.0 else eps
        z = math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * direction
    raise ValueError("timesteps must not be empty")
