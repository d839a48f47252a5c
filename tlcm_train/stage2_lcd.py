"""Stage 2, improved data-free latent consistency distillation (TLCM Alg. 2, Eqs. 9-10).

Interpretation of the paper, fixed here:

* Student rollout: q = 4 steps on the uniform grid (``tlcm.schedules.uniform_timesteps``: 999, 749, 499,
  249) from pure noise with the current student (no CFG, no gradient), each step x̂0 re-noised to the
  next timestep by the TLCM step (``rollout_eta`` 1 = the official fresh-noise sampler); ẑ0 is the last
  x̂0, detached.
* t_m is a milestone t_step^s, s = 1..M: one of grid[0..M−1] (999 ... 124) uniformly; t_n is the next
  milestone below (grid[k+1], possibly 0). ẑ_tm = forward diffusion of ẑ0 with fresh noise (Eq. 9).
* The teacher takes p = 3 equal CFG-DDIM steps over that one segment, ẑ_tm -> ẑ_tn.
* f_θ in Eq. 10 is read as the student's clean-latent prediction x̂0 (the paper does not define it
  further; the DDIM jump to t_n would be nearly the identity at t_n). Loss: d(x̂0(ẑ_tm), sg(x̂0(ẑ_tn))).
"""
from __future__ import annotations

import torch

from tlcm.sampling import renoise
from tlcm.schedules import milestone_grid, uniform_timesteps

from .config import DistillConfig, LcdConfig
from .consistency import ConsistencyPair, randint, randn
from .diffusion import Conditioning, Denoiser
from .teacher import even_path, teacher_solve


def student_rollout(denoiser: Denoiser, z: torch.Tensor, timesteps: list[int], cond: Conditioning, eta: float,
                    generator: torch.Generator) -> torch.Tensor:
    """ẑ0 of the current student sampled on ``timesteps`` (TLCM steps; no gradient)."""
    batch = z.shape[0]
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            x0, eps = denoiser.predict(z, torch.full((batch,), t, device=z.device), cond)
            if i == len(timesteps) - 1:
                return x0
            a_next = denoiser.alphas_host[timesteps[i + 1]]         # a host scalar: no device sync
            noise = randn(tuple(z.shape), generator, z) if eta > 0 else None
            z = a_next.sqrt() * renoise(x0, eps, ((1 - a_next) / a_next).sqrt(), noise, eta)
    raise ValueError("timesteps must not be empty")


class LcdStage:
    name = "lcd"

    def __init__(self, distill: DistillConfig, lcd: LcdConfig, latent_shape: tuple[int, int, int],
                 num_train_timesteps: int = 1000):
        self.num_segments = distill.num_segments
        self.guidance_scale = distill.guidance_scale
        self.teacher_steps = lcd.teacher_steps
        self.rollout_eta = lcd.rollout_eta
        self.rollout = uniform_timesteps(lcd.student_steps, num_train_timesteps)
        self.latent_shape = latent_shape
        self.grid = torch.tensor(milestone_grid(self.num_segments, num_train_timesteps))

    def make_pair(self, denoiser: Denoiser, cond: Conditioning, generator: torch.Generator) -> ConsistencyPair:
        batch, device = cond.embeds.shape[0], cond.embeds.device
        z_T = randn((batch, *self.latent_shape), generator, cond.embeds)
        z0 = student_rollout(denoiser, z_T, self.rollout, cond, self.rollout_eta, generator)
        k = randint(0, self.num_segments - 1, batch, generator, torch.device("cpu"))   # paths on the host
        t_m, t_n = self.grid[k], self.grid[k + 1]
        z_m = denoiser.add_noise(z0, randn(tuple(z0.shape), generator, z0), t_m)
        path = even_path(t_m, t_n, self.teacher_steps, self.teacher_steps)
        z_n = teacher_solve(denoiser, z_m, path, cond, self.guidance_scale)
        t_m, t_n = t_m.to(device), t_n.to(device)
        return ConsistencyPair(z_m, t_m, z_n, t_n, t_n, rollout=z0)

    def output(self, denoiser: Denoiser, x0: torch.Tensor, eps: torch.Tensor, pair: ConsistencyPair) -> torch.Tensor:
        """f_θ = x̂0."""
        return x0
