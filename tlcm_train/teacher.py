"""The teacher: a CFG-DDIM solver over the shared UNet with adapters disabled (the frozen base SDXL).

ε̂ = ε(∅) + w (ε(c) − ε(∅)) with w = 8 and a zero unconditional embedding; each step is a deterministic
DDIM move x̂0, ε̂ → z_{t_next}. Paths are per sample, shape (B, K + 1), so samples of one batch can take
different step sizes (Alg. 1's L = M − s varies with the segment); a step whose start and end timesteps
are equal leaves that sample untouched, which is how shorter paths are padded. Each step runs the UNet on
the samples still moving only (in stage 1 at batch 32 a third of the rows would otherwise be padding).
"""
from __future__ import annotations

import torch

from .adapters import teacher_mode
from .diffusion import Conditioning, Denoiser


def even_path(t_start: torch.Tensor, t_end: torch.Tensor, steps: torch.Tensor | int, max_steps: int) -> torch.Tensor:
    """Per-sample paths of ``steps`` equal steps from ``t_start`` to ``t_end`` (rounded to integers),
    padded with ``t_end`` to ``max_steps`` steps: shape (B, max_steps + 1), ``path[:, 0] = t_start``."""
    steps = torch.as_tensor(steps, device=t_start.device).expand_as(t_start).float()
    i = torch.arange(max_steps + 1, device=t_start.device).float().unsqueeze(0)
    frac = torch.clamp(i / steps.unsqueeze(1), max=1.0)
    path = t_start.unsqueeze(1).float() + frac * (t_end - t_start).unsqueeze(1).float()
    return torch.round(path).long()


def teacher_solve(denoiser: Denoiser, z: torch.Tensor, path: torch.Tensor, cond: Conditioning,
                  guidance_scale: float) -> torch.Tensor:
    """Run the teacher along ``path`` (B, K + 1) from ``z`` at ``path[:, 0]``; returns z at ``path[:, -1]``.

    No gradients flow (the teacher is frozen) and the student adapter is active again on return.
    """
    host, path = path.cpu(), path.to(z.device)      # which rows move is decided on the host: no device sync
    with teacher_mode(denoiser.unet):
        for k in range(path.shape[1] - 1):
            t, t_next = path[:, k], path[:, k + 1]
            rows = (host[:, k] != host[:, k + 1]).nonzero().flatten()
            if len(rows) == 0:
                continue
            moving = rows.to(z.device)
            x0, eps = denoiser.predict_cfg(z[moving], t[moving], cond.rows(moving), guidance_scale)
            z = z.index_copy(0, moving, denoiser.ddim_move(x0, eps, t_next[moving]).to(z.dtype))
    return z
