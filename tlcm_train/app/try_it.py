"""Try a TLCM LoRA (the one just trained, or any) at 1-8 steps beside its teacher, and convert it for other hosts.

Generation is the core's (``tlcm.generate``): official TLCM sampler, no CFG. The merged pipeline is
kept between clicks and rebuilt only when the model, the LoRA file or its strength changes, because
``apply_loras`` merges into the UNet weights (merging twice would double the LoRA). Exports go to a
fresh temporary folder that Gradio may serve; a PEFT adapter (a folder) is zipped.

The teacher baseline is what the LoRA is measured against: the same base model without the LoRA, the
same prompt, seed and size (so the same starting noise), sampled the usual many-step way — DDIM or Euler
with classifier-free guidance (SDXL's zero embedding as the unconditional branch, as the teacher was
used in distillation). Its samplers use trailing timestep spacing, which keeps the last step at t = 999
like the TLCM schedule. The core loads the model (``tlcm.models.load_sdxl_pipeline``); the baseline keeps
its own unmerged pipeline, so ticking it costs the memory of a second copy of the model (about 7 GB for
SDXL in fp16) until the app ends.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from tlcm.generate import GenerationSettings, apply_loras, generate, save_images
from tlcm.schedules import MAX_STEPS, MIN_STEPS
from tlcm.lora import FORMATS, load_lora, save_lora
from tlcm.models import load_sdxl_pipeline
from tlcm_train.export import EXPORT_NAMES

from .limits import (MAX_GUIDANCE, MAX_LORA_STRENGTH, MAX_PROMPT, MAX_SEED, MAX_SIDE, MAX_TEACHER_STEPS, check_between,
                     check_text, check_whole)
from .paths import check_lora, check_model


TEACHER_SAMPLERS = ("DDIM", "Euler")
TEACHER_STEPS = 25          # the usual many-step count for SDXL and the toy's reference (DDIM-25)


def teacher_scheduler(pipe, name: str):
    """``name``'s diffusers scheduler on the model's own noise schedule, with trailing timestep spacing."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    kinds = {"DDIM": DDIMScheduler, "Euler": EulerDiscreteScheduler}
    if name not in kinds:
        raise ValueError(f"Teacher sampler: one of {', '.join(kinds)}, got {name!r}")
    return kinds[name].from_config(pipe.scheduler.config, timestep_spacing="trailing")


class Sampler:
    """One SDXL pipeline with one merged LoRA, and the plain base model for the teacher baseline, shared by
    all tabs (one generation at a time)."""

    def __init__(self):
        self._guard = threading.Lock()
        self._key: tuple | None = None
        self._pipe = None
        self._base_key: Path | None = None
        self._base = None

    def _pipeline(self, model: Path, lora: Path, strength: float):
        key = (model, lora, lora.stat().st_mtime, strength)
        if key != self._key:
            self._pipe, self._key = None, None          # free the old one before loading
            pipe = load_sdxl_pipeline(model)
            apply_loras(pipe, [(str(lora), strength)])
            self._pipe, self._key = pipe, key
        return self._pipe

    def generate(self, model: str, lora: str, strength: float, settings: GenerationSettings,
                 save_dir: Path | None = None) -> list[Image.Image]:
        """Images for ``settings`` with ``lora`` merged at ``strength`` (saved with metadata to ``save_dir``)."""
        model_path, lora_path = check_model(model), check_lora(lora)
        settings.model, settings.loras = str(model_path), [(str(lora_path), strength)]
        settings.validate()
        with self._guard:
            images = generate(self._pipeline(model_path, lora_path, strength), settings)
        if save_dir is not None:
            save_images(images, save_dir, settings)
        return images

    def teacher(self, model: str, settings: GenerationSettings, sampler: str, steps: int,
                guidance: float) -> list[Image.Image]:
        """The base model without any LoRA for ``settings``' prompt, seed and size, with ``sampler`` at
        ``steps`` and CFG ``guidance``; the noise is the one ``generate`` starts from for that seed."""
        import torch
        model_path = check_model(model)
        settings.validate()
        with self._guard:
            if self._base_key != model_path:
                self._base, self._base_key = None, None
                self._base, self._base_key = load_sdxl_pipeline(model_path), model_path
            pipe = self._base
            pipe.scheduler = teacher_scheduler(pipe, sampler)
            device = pipe.unet.device
            generators = [torch.Generator(device).manual_seed(settings.seed + i) for i in range(settings.batch_size)]
            return pipe(prompt=[settings.prompt] * settings.batch_size, num_inference_steps=steps,
                        guidance_scale=guidance, generator=generators, height=settings.height, width=settings.width,
                        output_type="pil").images


def generate_images(sampler: Sampler, model: str, lora: str, prompt: str, steps: Any, strength: Any, seed: Any,
                    width: Any, height: Any) -> list[Image.Image]:
    """Try it: one image of the given fields, each checked against the app's limits before anything loads."""
    settings = GenerationSettings(check_text("Prompt", str(prompt or ""), MAX_PROMPT),
                                  steps=check_whole("Steps", steps, MIN_STEPS, MAX_STEPS),
                                  seed=check_whole("Seed", seed, 0, MAX_SEED),
                                  width=check_whole("Width", width, 8, MAX_SIDE),
                                  height=check_whole("Height", height, 8, MAX_SIDE))
    return sampler.generate(model, lora, check_between("LoRA strength", strength, 0.0, MAX_LORA_STRENGTH), settings)


def teacher_images(sampler: Sampler, model: str, prompt: str, seed: Any, width: Any, height: Any, name: str,
                   steps: Any, guidance: Any) -> list[Image.Image]:
    """The teacher baseline for the Try it fields, each checked against the app's limits first."""
    settings = GenerationSettings(check_text("Prompt", str(prompt or ""), MAX_PROMPT),
                                  seed=check_whole("Seed", seed, 0, MAX_SEED),
                                  width=check_whole("Width", width, 8, MAX_SIDE),
                                  height=check_whole("Height", height, 8, MAX_SIDE))
    if name not in TEACHER_SAMPLERS:
        raise ValueError(f"Teacher sampler: one of {', '.join(TEACHER_SAMPLERS)}, got {name!r}")
    steps = check_whole("Teacher steps", steps, 1, MAX_TEACHER_STEPS)
    return sampler.teacher(model, settings, name, steps, check_between("Teacher CFG", guidance, 1.0, MAX_GUIDANCE))


def export(lora: str, fmt: str) -> Path:
    """``lora`` rewritten as ``fmt`` in a new temporary folder; a PEFT folder comes back as a .zip."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    source = check_lora(lora)
    target = save_lora(load_lora(source), Path(tempfile.mkdtemp(prefix="tlcm-export-")) / EXPORT_NAMES[fmt], fmt)
    if target.is_dir():
        return Path(shutil.make_archive(str(target), "zip", root_dir=target))
    return target
