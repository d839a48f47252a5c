"""Data-free distribution matching (TLCM Eq. 12): pull the student's x̂0 toward the teacher's distribution.

Both scores live on the one frozen base UNet (docs/trainer.md §1): the real score is the base with
adapters disabled and CFG, the fake score is the base plus a second LoRA ``fake`` (B = 0 init, so it
starts equal to SDXL) trained by ε-MSE on student samples: by default the multi-step rollout ẑ0 of Eq. 9
(the paper's "synthetic ẑ0"), or the detached one-step x̂0 that the gradient moves (DMD2's choice,
``fake_data="one_step"``). The generator gradient
is the DMD formula (re-implemented from the DMD paper's math, docs/trainer.md §3 and §9): at
x_t' = FD(x̂0, t'),

    grad = (p_real − p_fake) / mean|p_real|,   p = x̂0 − x̂0_score(x_t', t')   (per-sample mean),

injected through the surrogate 0.5 · mse(x̂0, sg(x̂0 − grad)), whose gradient wrt x̂0 is grad / N
(N = numel of the batch, the mean reduction).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from .adapters import add_side_adapter, adapter_state
from .aux_grad import AuxTerm, Logged
from .config import FAKE_DATA
from .consistency import randint, randn
from .diffusion import Conditioning, Denoiser
from .technique import AuxBatch, rollout_of
from .trainables import Sync, load_trainable_state, optimizer_step, trainable_state

FAKE = "fake"


def dm_gradient(denoiser: Denoiser, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                guidance_scale: float) -> torch.Tensor:
    """(p_real − p_fake) / mean|p_real| at FD(x0, t); both scores under ``no_grad``, each in its own adapter
    state, so no UNet graph outlives its state (docs/trainer.md §3)."""
    unet = denoiser.unet
    with torch.no_grad():
        x0 = x0.detach().float()
        z = denoiser.add_noise(x0, noise, t)
        with adapter_state(unet, None):
            real = denoiser.predict_cfg(z, t, cond, guidance_scale)[0]
        with adapter_state(unet, FAKE):
            fake = denoiser.predict(z, t, cond)[0]
        p_real, p_fake = x0 - real, x0 - fake
        scale = p_real.abs().mean(dim=tuple(range(1, x0.dim())), keepdim=True).clamp_min(1e-8)
        return (p_real - p_fake) / scale


class DistributionMatching:
    """The ``dmd`` technique: generator term + fake-score training (``fake_updates`` ε-MSE steps per
    student step; DMD2 uses 5 on SDXL, TLCM does not say)."""

    name = "dmd"

    def __init__(self, denoiser: Denoiser, *, rank: int = 64, alpha: float = 8.0,
                 target_modules: list[str] | None = None, lr: float = 1e-5, fake_updates: int = 1,
                 guidance_scale: float = 8.0, weight: float = 1.0, t_min: int = 20, t_max: int = 980,
                 fake_data: str = "rollout", sync: Sync | None = None):
        if not 0 <= t_min <= t_max < denoiser.num_train_timesteps:
            raise ValueError(f"dmd needs 0 <= t_min <= t_max < {denoiser.num_train_timesteps}, got {t_min}, {t_max}")
        if fake_updates < 1:
            raise ValueError(f"dmd fake_updates must be >= 1, got {fake_updates}")
        if fake_data not in FAKE_DATA:
            raise ValueError(f"dmd fake_data must be one of {FAKE_DATA}, got {fake_data!r}")
        self.fake_data = fake_data
        self.denoiser, self.guidance_scale, self.weight = denoiser, guidance_scale, weight
        self.t_min, self.t_max, self.fake_updates, self.sync = t_min, t_max, fake_updates, sync
        self._named = add_side_adapter(denoiser.unet, FAKE, rank, alpha, target_modules)
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=lr)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self._named.values())

    def terms(self, batch: AuxBatch) -> list[AuxTerm]:
        """One term ``dmd``; t' ~ U[t_min, t_max] and the noise are drawn now, from the training generator.
        It needs no state of its own: the scores switch states under ``no_grad`` inside the loss, and the
        surrogate that carries the gradient touches no UNet."""
        x0 = batch.x0
        t = randint(self.t_min, self.t_max, x0.shape[0], batch.generator, x0.device)
        noise = randn(tuple(x0.shape), batch.generator, x0)

        def loss(x: torch.Tensor) -> torch.Tensor:
            grad = dm_gradient(self.denoiser, x, noise, t, batch.cond, self.guidance_scale)
            return 0.5 * F.mse_loss(x, (x - grad).detach())

        return [AuxTerm("dmd", loss, weight=self.weight)]

    def update(self, batch: AuxBatch) -> Logged:
        """Train the fake score on student samples (``fake_data``): ε-MSE at t ~ U[0, T); each backward runs
        inside the ``fake`` state (with checkpointing, the recomputation must see that state)."""
        den = self.denoiser
        x0 = (rollout_of(batch, "dmd fake_data=rollout") if self.fake_data == "rollout" else batch.x0).detach().float()
        losses = []
        for _ in range(self.fake_updates):
            t = randint(0, den.num_train_timesteps - 1, x0.shape[0], batch.generator, x0.device)
            noise = randn(tuple(x0.shape), batch.generator, x0)
            with adapter_state(den.unet, FAKE), torch.enable_grad():
                loss = F.mse_loss(den.predict(den.add_noise(x0, noise, t), t, batch.cond)[1], noise)
                loss.backward()
            optimizer_step(self.parameters(), self.optimizer, self.sync)
            losses.append(loss.detach())
        return {"dmd/fake_loss": torch.stack(losses).mean()}

    def state_dict(self) -> dict[str, Any]:
        return trainable_state(self.name, self._named, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state(self.name, self._named, self.optimizer, state)
