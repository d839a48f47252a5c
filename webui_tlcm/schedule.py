"""The TLCM schedule as a WebUI scheduler function (``sd_schedulers.Scheduler``, A1111 >= 1.9).

The host calls it with keywords ``(n, sigma_min, sigma_max, inner_model, device)`` and expects ``n + 1``
sigmas ending in 0. The sigmas are read from the host's own table (``inner_model.sigmas[t]``), so the
host's ``sigma_to_t`` maps them back to exactly the milestone timesteps (999, 749, 499, 124 at n = 4)
whatever precision the model's ᾱ table has; ``sigma_min``/``sigma_max`` are ignored because the
milestones are fixed by the LoRA. For n > 8 the core rule applies (``tlcm.schedules``): hires fix and
img2img ask for ``n = int(steps / denoise)`` and keep the last ``steps``, which is TLCM's partial-denoise
rule.

FLUX on Forge (its model predictor is a flow predictor, ``prediction_type == "const"``): the official
TLCM-FLUX sigmas, linspace(1, 1/n, n) shifted by the predictor's own resolution shift ``mu``, then 0. The
predictor's ``percent_to_sigma`` is not used: Forge's FLUX predictor returns the unshifted time there.
"""
from __future__ import annotations

from typing import Any

import torch

from tlcm.schedules import flow_times, flux_time_shift, tlcm_timesteps


def flow_predictor(inner_model: Any) -> Any | None:
    """Forge's predictor of a flow-matching model (FLUX), else None (A1111's denoisers have no predictor)."""
    predictor = getattr(inner_model, "predictor", None)
    return predictor if getattr(predictor, "prediction_type", None) == "const" else None


def tlcm_scheduler(n: int, sigma_min: float, sigma_max: float, inner_model: Any,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``n + 1`` host sigmas at the TLCM milestones, then 0 (float32 on ``device``)."""
    predictor = flow_predictor(inner_model)
    if predictor is not None:
        mu = getattr(predictor, "mu", None)
        if mu is None:
            raise ValueError("TLCM: this flow-matching model has no FLUX resolution shift (mu); TLCM supports "
                             "FLUX.1 among flow models")
        sigmas = flux_time_shift(torch.tensor(flow_times(n), dtype=torch.float64), float(mu)).float()
        return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)
    table = inner_model.sigmas
    timesteps = tlcm_timesteps(n, num_train_timesteps=len(table))
    sigmas = table[torch.tensor(timesteps, device=table.device)].float()
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)
