"""FLUX.1 with a TLCM LoRA: load a local diffusers FLUX folder and sample it as the official code does.

FLUX.1-dev carries its guidance as an embedding (``FluxPipeline``'s ``guidance_scale``; the official
TLCM-FLUX README uses 7): one transformer pass per step, no CFG and no negative prompt. The TLCM-FLUX
step re-noises x̂0 with fresh noise (eta 1; the deterministic variant and the uniform schedule exist for
SDXL only) on FLUX's shifted sigmas (:class:`~tlcm.flow_scheduler.TLCMFlowMatchScheduler`). Image i draws
its start latents and then every step's noise from one generator seeded ``seed + i``, so it is the same
in any batch.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from .file_readers import read_json
from .generate import GenerationSettings, to_pil_images
from .models.device import auto_device_dtype
from .models.dtype_argument import dtype_argument
from .models.loader import DAMAGED_FOLDER_ERRORS, offline

FLUX_GUIDANCE = 7.0
FLUX_HINT = "pass a local diffusers FLUX.1-dev folder (black-forest-labs/FLUX.1-dev: model_index.json and its components)"


def is_flux_folder(path: str | os.PathLike) -> bool:
    """A diffusers folder whose ``model_index.json`` names ``FluxPipeline``."""
    index = Path(path).expanduser() / "model_index.json"
    return index.is_file() and read_json(index).get("_class_name") == "FluxPipeline"


def load_flux_pipeline(path: str | os.PathLike, *, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None):
    """A local FLUX folder as a ``FluxPipeline`` on ``device``; never downloads."""
    from diffusers import FluxPipeline
    path = Path(path).expanduser()
    if not is_flux_folder(path):
        raise FileNotFoundError(f"no FLUX model at {path}: {FLUX_HINT}")
    device, auto_dtype = auto_device_dtype(device)
    with offline():
        try:
            pipe = FluxPipeline.from_pretrained(path, **dtype_argument("diffusers", dtype or auto_dtype),
                                                local_files_only=True)
        except DAMAGED_FOLDER_ERRORS as err:
            raise ValueError(f"{path} could not be loaded ({type(err).__name__}: {err}); a component's files are "
                             "missing or damaged: re-download the model.") from err
    return pipe.to(device)


def check_flux_settings(settings: GenerationSettings) -> None:
    """What FLUX sampling cannot honour is an error, not silently ignored."""
    if settings.guidance_scale > 1.0 or settings.negative_prompt:
        raise ValueError("FLUX has no CFG and no negative prompt: leave --cfg at 1 and set the guidance "
                         f"embedding with --flux-guidance (official TLCM-FLUX value {FLUX_GUIDANCE:g})")
    if settings.eta != 1.0 or settings.schedule != "tlcm":
        raise ValueError("FLUX runs the official TLCM-FLUX step only: eta 1 and the tlcm schedule")


def generate_flux(pipe, settings: GenerationSettings) -> list[Image.Image]:
    """Run ``pipe`` (a ``FluxPipeline``) with the TLCM-FLUX scheduler at ``settings.flux_guidance`` (default
    the official 7); one image per seed."""
    from .flow_scheduler import TLCMFlowMatchScheduler
    settings.validate()
    check_flux_settings(settings)
    if not isinstance(pipe.scheduler, TLCMFlowMatchScheduler):
        pipe.scheduler = TLCMFlowMatchScheduler.from_config(pipe.scheduler.config)
    images = []
    for i in range(settings.batch_size):
        generator = torch.Generator().manual_seed(settings.seed + i)
        pipe.scheduler.set_noise_generator(generator)       # after the start latents, from the same stream
        try:
            out = pipe(settings.prompt, height=settings.height, width=settings.width,
                       num_inference_steps=settings.steps, guidance_scale=FLUX_GUIDANCE if settings.flux_guidance is None else settings.flux_guidance,
                       generator=generator,
                       output_type="pt")
        finally:
            pipe.scheduler.set_noise_generator(None)
        images += to_pil_images(out.images)
    return images
