"""Offer ``tlcm`` in the plain KSampler / KSamplerAdvanced / KSamplerSelect dropdowns.

Those nodes read ComfyUI's module-level name lists, so the names are appended *in place* (rebinding would
leave the dropdowns unchanged) and only once (a pack can be imported again, e.g. by tests).
"""
from __future__ import annotations

import comfy.k_diffusion.sampling as k_sampling
import comfy.samplers as samplers

from .sampling import sample_tlcm, tlcm_scheduler

NAME = "tlcm"


def _append_once(names: list[str]) -> None:
    if NAME not in names:
        names.append(NAME)


def register_sampler_and_scheduler() -> None:
    """Sampler ``tlcm`` (resolved by ``ksampler()`` as ``sample_tlcm``) and scheduler ``tlcm``."""
    k_sampling.sample_tlcm = sample_tlcm
    _append_once(samplers.KSAMPLER_NAMES)
    _append_once(samplers.SAMPLER_NAMES)
    samplers.SCHEDULER_HANDLERS[NAME] = samplers.SchedulerHandler(tlcm_scheduler, use_ms=True)
    _append_once(samplers.SCHEDULER_NAMES)
