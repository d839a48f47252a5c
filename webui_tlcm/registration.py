"""Put the TLCM sampler and scheduler into the WebUI's lists, once, however often the script is loaded.

Surfaces (A1111 1.10 ``modules/sd_samplers.py``, ``sd_schedulers.py``, ``sd_samplers_common.py``; Forge and
reForge keep the same names):

* ``sd_schedulers.schedulers`` (the UI dropdown) and ``schedulers_map`` (looked up by name *and* label);
* ``sd_samplers.all_samplers`` / ``all_samplers_map`` (the API validates ``sampler_name`` against the map),
  then ``set_samplers()``; Forge has ``add_sampler()``, which does all three and must be used there because
  it rebinds the map;
* ``sd_samplers.get_sampler_and_scheduler`` is ``functools.cache``d: a lookup of "TLCM" made before
  registration would keep answering the default sampler, so its cache is cleared.

"Reload UI" re-runs the extension's script while ``modules.*`` keep their lists, so each step checks
for the name first. The sampler's "Automatic" schedule is TLCM's (``options["scheduler"]``).
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

from . import SAMPLER_NAME, SCHEDULER_LABEL, SCHEDULER_NAME
from .sampler import build_sampler_class
from .schedule import tlcm_scheduler

SAMPLER_OPTIONS = {"scheduler": SCHEDULER_NAME, "uses_ensd": True}
"""``uses_ensd``: TLCM draws fresh noise every step, so the "Eta noise seed delta" setting applies (infotext ENSD)."""


def register_scheduler(sd_schedulers: ModuleType) -> bool:
    """Add the TLCM scheduler unless present; True if added."""
    if any(s.name == SCHEDULER_NAME for s in sd_schedulers.schedulers):
        return False
    scheduler = sd_schedulers.Scheduler(name=SCHEDULER_NAME, label=SCHEDULER_LABEL, function=tlcm_scheduler,
                                        need_inner_model=True)
    sd_schedulers.schedulers.append(scheduler)
    sd_schedulers.schedulers_map[SCHEDULER_NAME] = scheduler
    sd_schedulers.schedulers_map[SCHEDULER_LABEL] = scheduler
    return True


def register_sampler(sd_samplers: ModuleType, sampler_data_cls: type, sampler_cls: type) -> bool:
    """Add the TLCM sampler unless present (Forge: ``add_sampler``); True if added."""
    if any(s.name == SAMPLER_NAME for s in sd_samplers.all_samplers):
        return False
    data = sampler_data_cls(SAMPLER_NAME, sampler_cls, [], dict(SAMPLER_OPTIONS))
    if hasattr(sd_samplers, "add_sampler"):
        sd_samplers.add_sampler(data)
    else:
        sd_samplers.all_samplers.append(data)
        sd_samplers.all_samplers_map[SAMPLER_NAME] = data
        sd_samplers.set_samplers()
    return True


def register(sd_samplers: ModuleType, sd_schedulers: ModuleType, sampler_data_cls: type,
             kdiffusion_sampler_cls: type, opts: Any) -> list[str]:
    """Register both and clear the sampler lookup cache; returns what was added (empty on a reload)."""
    added = []
    if register_scheduler(sd_schedulers):
        added.append(f"scheduler {SCHEDULER_LABEL}")
    if register_sampler(sd_samplers, sampler_data_cls, build_sampler_class(kdiffusion_sampler_cls, opts)):
        added.append(f"sampler {SAMPLER_NAME}")
    cached = getattr(sd_samplers, "get_sampler_and_scheduler", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()
    return added


def register_with_webui() -> list[str]:
    """Import the running WebUI's modules and register (A1111 >= 1.9, Forge, reForge)."""
    from modules import sd_samplers, sd_samplers_common, sd_samplers_kdiffusion, shared
    try:
        from modules import sd_schedulers
    except ImportError as err:
        raise RuntimeError("TLCM needs a WebUI with a scheduler list (A1111 >= 1.9, Forge, reForge); "
                           "this one has no modules.sd_schedulers") from err
    return register(sd_samplers, sd_schedulers, sd_samplers_common.SamplerData,
                    sd_samplers_kdiffusion.KDiffusionSampler, shared.opts)
