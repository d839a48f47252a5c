"""The TLCM sampler as a WebUI k-diffusion sampler: the core ``sample_tlcm`` plus what the host owns.

The host (A1111 ``sd_samplers_kdiffusion.KDiffusionSampler`` and its Forge / reForge copies) runs
``func(model_wrap_cfg, x, sigmas=..., extra_args=..., callback=..., disable=...)``, handles CFG,
ControlNet, masks, interrupts and previews. Three things are TLCM-specific and done here:

* **Seeded noise**: every fresh ξ comes from ``model.p.rng.next()``, the host's per-seed generator
  (``modules.rng.ImageRNG``), so a seed reproduces and an image does not depend on its batch. This works
  in reForge too, whose k-diffusion copy is not the one the host patches for its own samplers.
* **Start noise**: for txt2img the host scales unit noise by σ0 (or by √(1+σ0²) when the user enables
  "SGM noise multiplier"); TLCM starts from VP noise at t = 999, i.e. √(1+σ0²)·ξ in sigma space, so the
  sampler corrects σ0·ξ by √(1+σ0²)/σ0. img2img and the hires pass add ``noise·σ_start`` to the image
  latent, which is already TLCM's forward diffusion and is left alone.
* **Partial denoise**: img2img always passes ``steps`` to the host, so the host takes its "fix steps"
  branch (schedule for ``int(steps/denoise)``, keep the last ``steps``) — the core's rule, identical to
  hires fix, ComfyUI and ``tlcm.generate``; 4 steps at 0.5 visit 499, 374, 249, 124.
* **FLUX on Forge**: Forge samples FLUX through the same class with a flow predictor; there the start is
  Forge's own (σ0·ξ + (1 − σ0)·latent) and each step is the official TLCM-FLUX one,
  x ← (1 − σ')·x̂0 + σ'·ξ (``tlcm.sampling.sample_tlcm_flow``), on the schedule of ``schedule.py``.
* **No negative-prompt pass at CFG 1**: A1111's CFG wrapper runs the UNet on cond and uncond even at CFG
  1, where the uncond output cannot change the result (uncond + (cond − uncond)·1 = cond): twice the UNet
  work of ComfyUI and Forge, which skip it. A1111 >= 1.10 skips it for the steps its ``skip_early_cond``
  setting covers, so while a TLCM sampling at CFG 1 runs that setting reads 1.0 (every step), set in
  ``opts.data`` and restored exactly afterwards (the user's saved settings never change), and the
  "Skip Early CFG" entry it leaves in the infotext is the user's own value again (or gone), so pasting
  the infotext back never turns the skip on for other generations.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from tlcm.sampling import NoiseSampler, sample_tlcm, sample_tlcm_flow

from .schedule import flow_predictor


def start_noise_factor(sigma0: torch.Tensor) -> torch.Tensor:
    """√(1+σ0²)/σ0: makes the host's σ0·ξ TLCM's start √(1+σ0²)·ξ (VP noise at the first milestone)."""
    return (1.0 + sigma0 ** 2).sqrt() / sigma0


def host_noise_sampler(model: Any, x: torch.Tensor) -> NoiseSampler:
    """A noise sampler drawing from the host's seeded RNG (``model.p.rng``, set by ``Sampler.initialize``)."""
    rng = getattr(getattr(model, "p", None), "rng", None)
    if rng is None:
        raise RuntimeError("TLCM sampler: the WebUI did not attach its seeded RNG (model_wrap_cfg.p.rng); this "
                           "WebUI version is not supported (A1111 >= 1.9, Forge, reForge are)")
    return lambda sigma, sigma_next: rng.next().to(device=x.device, dtype=x.dtype)


SKIP_UNCOND_SETTING = "skip_early_cond"
SKIP_UNCOND_INFOTEXT = "Skip Early CFG"      # what A1111 writes into the infotext when that setting acts


@contextmanager
def uncond_pass_skipped(opts: Any, p: Any, cfg_scale: float) -> Iterator[None]:
    """At CFG 1, and where the host has the setting (A1111 >= 1.10), ``opts.skip_early_cond`` reads 1.0
    inside; afterwards the setting and the infotext say what the user's own value says."""
    data = getattr(opts, "data", None)
    if cfg_scale != 1 or not isinstance(data, dict) or SKIP_UNCOND_SETTING not in getattr(opts, "data_labels", {}):
        yield
        return
    had, before = SKIP_UNCOND_SETTING in data, data.get(SKIP_UNCOND_SETTING)
    users = getattr(opts, SKIP_UNCOND_SETTING)
    data[SKIP_UNCOND_SETTING] = 1.0
    try:
        yield
    finally:
        if had:
            data[SKIP_UNCOND_SETTING] = before
        else:
            data.pop(SKIP_UNCOND_SETTING, None)
        params = getattr(p, "extra_generation_params", {})
        if users:
            params[SKIP_UNCOND_INFOTEXT] = users
        else:
            params.pop(SKIP_UNCOND_INFOTEXT, None)


def pass_cfg(p: Any) -> float:
    """The CFG scale of the pass being sampled (Forge gives the hires pass its own ``hr_cfg``)."""
    return getattr(p, "hr_cfg", p.cfg_scale) if getattr(p, "is_hr_pass", False) else p.cfg_scale


def build_sampler_class(base: type, opts: Any) -> type:
    """A subclass of the host's ``KDiffusionSampler`` running TLCM (``opts`` = ``shared.opts``, read live)."""

    class TLCMKDiffusionSampler(base):
        """TLCM in the host's k-diffusion machinery; see the module docstring for what it changes."""

        def __init__(self, sd_model: Any, options: dict | None = None) -> None:
            self.rescale_start_noise = False
            super().__init__(self.sample_tlcm, sd_model, options)

        def sample(self, p: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self.rescale_start_noise = not getattr(opts, "sgm_noise_multiplier", False)
            try:
                with uncond_pass_skipped(opts, p, pass_cfg(p)):
                    return super().sample(p, x, *args, **kwargs)
            finally:
                self.rescale_start_noise = False

        def sample_img2img(self, p: Any, x: torch.Tensor, noise: torch.Tensor, conditioning: Any,
                           unconditional_conditioning: Any, steps: int | None = None, **kwargs: Any) -> torch.Tensor:
            with uncond_pass_skipped(opts, p, pass_cfg(p)):
                return super().sample_img2img(p, x, noise, conditioning, unconditional_conditioning,
                                              steps=steps or p.steps, **kwargs)

        def sample_tlcm(self, model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                        extra_args: dict | None = None, callback: Callable[[dict], None] | None = None,
                        disable: bool | None = None) -> torch.Tensor:
            if flow_predictor(self.model_wrap) is not None:      # FLUX on Forge: the host scaled x itself
                return sample_tlcm_flow(model, x, sigmas, extra_args, callback, disable,
                                        noise_sampler=host_noise_sampler(model, x))
            if self.rescale_start_noise:
                x = x * start_noise_factor(sigmas[0])
            return sample_tlcm(model, x, sigmas, extra_args, callback, disable,
                               noise_sampler=host_noise_sampler(model, x))

    return TLCMKDiffusionSampler
