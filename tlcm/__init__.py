"""TLCM core: milestone schedules, the TLCM sampling step, a diffusers scheduler, LoRA formats, generation.

Pure torch/diffusers/peft/safetensors; never imports ComfyUI or WebUI code. Heavy modules load lazily so
hosts importing ``tlcm.sampling`` do not pay for diffusers.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TLCMScheduler": "tlcm.scheduler",
    "sample_tlcm": "tlcm.sampling",
    "schedule_timesteps": "tlcm.schedules",
    "tlcm_sigmas": "tlcm.schedules",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlcm' has no attribute {name!r}")


__all__ = sorted(_LAZY)
