"""The "TLCM mode" switch: the generation settings TLCM needs, applied to a WebUI processing object, and its infotext.

Applied in ``Script.before_process`` — before the host validates sampler/scheduler
(``fix_p_invalid_sampler_and_scheduler``), builds the hires settings and writes the infotext — so the UI,
the API (``alwayson_scripts``), batches and X/Y/Z plots all see the same values. The infotext gets
``TLCM mode: True`` next to the host's own ``Steps``, ``Sampler: TLCM``, ``Schedule type: TLCM`` and
``CFG scale: 1``; pasting it back turns the switch on and restores the step count.
"""
from __future__ import annotations

from typing import Any, Mapping

from tlcm.schedules import MAX_STEPS, MIN_STEPS, check_step_count

from . import SAMPLER_NAME, SCHEDULER_LABEL

MODE_KEY = "TLCM mode"
TLCM_CFG = 1.0
"""TLCM distils guidance (w = 8) into the LoRA: one conditional pass, CFG 1 (the negative prompt has no effect)."""


def check_mode_args(enabled: Any, steps: Any) -> tuple[bool, int]:
    """Validate the script arguments (UI or API ``alwayson_scripts.tlcm.args``) -> (enabled, steps)."""
    if not isinstance(enabled, bool):
        raise ValueError(f"TLCM mode: the switch must be true or false, got {enabled!r}")
    return enabled, check_step_count(steps, "TLCM mode: steps")


def apply_tlcm_mode(p: Any, steps: int) -> None:
    """Set sampler TLCM, schedule TLCM, CFG 1 and ``steps`` on ``p`` and mark the infotext."""
    p.sampler_name = SAMPLER_NAME
    p.scheduler = SCHEDULER_LABEL
    p.cfg_scale = TLCM_CFG
    p.steps = steps
    if hasattr(p, "hr_cfg"):                     # Forge: separate hires-pass CFG
        p.hr_cfg = TLCM_CFG
    p.extra_generation_params[MODE_KEY] = True


def main_control_values(steps: int) -> dict[str, Any]:
    """What the tab's own controls show in TLCM mode, keyed by their elem_id suffix (``txt2img_<key>``)."""
    return {"sampling": SAMPLER_NAME, "scheduler": SCHEDULER_LABEL, "steps": steps, "cfg_scale": TLCM_CFG}


def mode_from_infotext(params: Mapping[str, str]) -> bool:
    """Paste-back of the switch: on only for ``TLCM mode: True`` (off for any other infotext)."""
    return str(params.get(MODE_KEY, "")).strip().lower() == "true"


def steps_from_infotext(params: Mapping[str, str]) -> int | None:
    """Paste-back of the step slider: the infotext's ``Steps`` when it was a TLCM-mode image, else no change."""
    if not mode_from_infotext(params):
        return None
    try:
        steps = int(params["Steps"])
    except (KeyError, ValueError):
        return None
    return steps if MIN_STEPS <= steps <= MAX_STEPS else None
