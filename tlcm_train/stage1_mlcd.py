"""Stage 1, data-free multistep latent consistency distillation (TLCM Alg. 1, Eq. 7).

Interpretation of the paper, fixed here:

* The milestone grid is ``tlcm.schedules.milestone_grid(M)`` (999, 874, ..., 124, 0 for M = 8). Segment k
  (0 = top) spans (grid[k+1], grid[k]]; the paper's index s counts from the bottom, s = M − 1 − k, and
  its boundary t_step^s is the segment's lower end grid[k+1]. Each sample draws k uniformly.
* t_m is uniform on the integers [boundary + skip, grid[k]] so that t_n = t_m − skip (skip 20) stays in
  the segment.
* Multistep denoising strategy (MDS): z_T is pure noise at T = grid[0] = 999 (no data); the teacher
  (CFG w = 8, DDIM) takes L = M − s = k + 1 equal steps of (T − t_m)/L down to z_tm (more steps for
  smaller t_m), then one more CFG-DDIM step to z_tn (Eq. 8).
* g_θ is the deterministic DDIM jump of the student's (x̂0, ε̂) to the boundary; the last boundary
  (t = 0) is the clean latent x̂0, where the TLCM sampler ends. Loss: d(g_θ(z_tm), sg(g_θ(z_tn))).
"""
from __future__ import annotations

import torch

from tlcm.schedules import milestone_grid

from .config import DistillConfig, MlcdConfig
from .consistency import ConsistencyPair, randint, randn
from .diffusion import Conditioning, Denoiser
from .teacher import even_path, teacher_solve


class MlcdStage:
    name = "mlcd"

    def __init__(self, distill: DistillConfig, mlcd: MlcdConfig, latent_shape: tuple[int, int, int],
                 num_train_timesteps: int = 1000):
        self.num_segments = distill.num_segments
        self.guidance_scale = distill.guidance_scale
        self.skip = mlcd.skip
        self.latent_shape = latent_shape
        self.grid = torch.tensor(milestone_grid(self.num_segments, num_train_timesteps))

    def make_pair(self, denoiser: Denoiser, cond: Conditioning, generator: torch.Generator) -> ConsistencyPair:
        batch, device, host = cond.embeds.shape[0], cond.embeds.device, torch.device("cpu")
        grid = self.grid              # timesteps and paths on the host, where their random numbers are drawn
        k = randint(0, self.num_segments - 1, batch, generator, host)
        boundary = grid[k + 1]
        t_m = randint(boundary + self.skip, grid[k], batch, generator, host)
        t_n = t_m - self.skip
        z_T = randn((batch, *self.latent_shape), generator, cond.embeds)
        mds = even_path(torch.full_like(t_m, int(grid[0])), t_m, k + 1, self.num_segments)
        z_m = teacher_solve(denoiser, z_T, mds, cond, self.guidance_scale)
        z_n = teacher_solve(denoiser, z_m, torch.stack([t_m, t_n], dim=1), cond, self.guidance_scale)
        return ConsistencyPair(z_m, t_m.to(device), z_n, t_n.to(device), boundary.to(device))

    def output(self, denoiser: Denoiser, x0: torch.Tensor, eps: torch.Tensor, pair: ConsistencyPair) -> torch.Tensor:
        """g_θ: DDIM jump to the segment boundary (x̂0 at the last boundary)."""
        return denoiser.ddim_move(x0, eps, pair.boundary, clean_at_zero=True)
