"""Try a TLCM LoRA (the one just trained, or any) at 1-8 steps beside its teacher, and convert it for other hosts.

Generation is the core's (``tlcm.generate``): official TLCM sampler, no CFG. One pipeline of the base
model is kept between clicks and loaded again only when the model changes. The LoRA is merged into its
UNet weights; a new LoRA file, a rewritten one or another strength first puts the merged modules' own
weights back (kept on the CPU when merging, restored bit for bit), so nothing is merged twice and nothing
is reloaded. On a GPU that a training run of this app is using, Try it refuses to load a model (an SDXL
copy next to the trainer's would run both out of memory). Exports go to the app's own temporary folder,
which keeps only the latest (Gradio serves its copy); a PEFT adapter (a folder) is zipped.

The teacher baseline is what the LoRA is measured against: the same base model without the LoRA, the
same prompt, seed and size (so the same starting noise), sampled the usual many-step way — DDIM or Euler
with classifier-free guidance (SDXL's zero embedding as the unconditional branch, as the teacher was
used in distillation). Its samplers use trailing timestep spacing, which keeps the last step at t = 999
like the TLCM schedule. It runs on the same pipeline with the LoRA taken out, so it costs no second copy.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from tlcm.generate import GenerationSettings, apply_lora, generate, save_images
from tlcm.schedules import MAX_STEPS, MIN_STEPS
from tlcm.lora import FORMATS, load_lora, match_lora, save_lora
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
    """One SDXL pipeline with at most one merged LoRA, shared by all tabs (one generation at a time).

    ``gpu_busy`` answers why the GPU is taken (e.g. ``JobManager.active_run``), or None when it is free."""

    def __init__(self, gpu_busy: Callable[[], str | None] | None = None):
        self._guard = threading.Lock()
        self._gpu_busy = gpu_busy or (lambda: None)
        self._model: Path | None = None
        self._pipe = None
        self._merged: tuple | None = None               # (LoRA path, mtime, strength) now in the weights
        self._original: dict[str, Any] = {}           # module path -> its weight before the merge (CPU)

    def _base(self, model: Path):
        """The pipeline of ``model`` with no LoRA in it."""
        if model != self._model:
            import torch
            self._pipe, self._model, self._merged, self._original = None, None, None, {}   # free it first
            if torch.cuda.is_available() and (reason := self._gpu_busy()):
                raise ValueError(f"Try it would load a second copy of the model onto the GPU while {reason}; "
                                 "stop the run or wait for it to finish")
            self._pipe, self._model = load_sdxl_pipeline(model), model
        self._unmerge()
        return self._pipe

    def _unmerge(self) -> None:
        import torch
        with torch.no_grad():
            for path, weight in self._original.items():
                self._pipe.unet.get_submodule(path).weight.copy_(weight)
        self._merged, self._original = None, {}

    def _pipeline(self, model: Path, lora: Path, strength: float):
        key = (lora, lora.stat().st_mtime, strength)
        if model == self._model and key == self._merged:
            return self._pipe
        pipe = self._base(model)
        lora_file = load_lora(lora)
        paths = match_lora(lora_file, pipe.unet).matched.values()
        self._original = {p: pipe.unet.get_submodule(p).weight.detach().to("cpu", copy=True) for p in paths}
        apply_lora(pipe, lora_file, lora.name, strength)
        self._merged = key
        return pipe

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
            pipe = self._base(model_path)
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


class Exports:
    """Export's files: one temporary folder for the app's life, holding only the latest export and removed
    with the app. Gradio serves its own copy of each file a handler returns, so the previous export is not
    needed once the next is asked for, and nothing piles up in the system's temporary folder. The app runs
    one export at a time (its Export event has a concurrency limit of 1, Gradio's copy included)."""

    def __init__(self) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="tlcm-export-")
        self.folder = Path(self._scratch.name)

    def export(self, lora: str, fmt: str) -> Path:
        """``lora`` rewritten as ``fmt``; a PEFT folder comes back as a .zip."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
        state = load_lora(check_lora(lora))
        for previous in self.folder.iterdir():
            shutil.rmtree(previous) if previous.is_dir() else previous.unlink()
        target = save_lora(state, self.folder / EXPORT_NAMES[fmt], fmt)
        if target.is_dir():
            return Path(shutil.make_archive(str(target), "zip", root_dir=target))
        return target
