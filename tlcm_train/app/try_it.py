"""Try a TLCM LoRA (the one just trained, or any) at 1-8 steps, and convert it for other hosts.

Generation is the core's (``tlcm.generate``): official TLCM sampler, no CFG. The merged pipeline is
kept between clicks and rebuilt only when the model, the LoRA file or its strength changes, because
``apply_loras`` merges into the UNet weights (merging twice would double the LoRA). Exports go to a
fresh temporary folder that Gradio may serve; a PEFT adapter (a folder) is zipped.
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

from .limits import MAX_LORA_STRENGTH, MAX_PROMPT, MAX_SEED, MAX_SIDE, check_between, check_text, check_whole
from .paths import check_lora, check_model


class Sampler:
    """One SDXL pipeline with one merged LoRA, shared by all tabs (one generation at a time)."""

    def __init__(self):
        self._guard = threading.Lock()
        self._key: tuple | None = None
        self._pipe = None

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


def generate_images(sampler: Sampler, model: str, lora: str, prompt: str, steps: Any, strength: Any, seed: Any,
                    width: Any, height: Any) -> list[Image.Image]:
    """Try it: one image of the given fields, each checked against the app's limits before anything loads."""
    settings = GenerationSettings(check_text("Prompt", str(prompt or ""), MAX_PROMPT),
                                  steps=check_whole("Steps", steps, MIN_STEPS, MAX_STEPS),
                                  seed=check_whole("Seed", seed, 0, MAX_SEED),
                                  width=check_whole("Width", width, 8, MAX_SIDE),
                                  height=check_whole("Height", height, 8, MAX_SIDE))
    return sampler.generate(model, lora, check_between("LoRA strength", strength, 0.0, MAX_LORA_STRENGTH), settings)


def export(lora: str, fmt: str) -> Path:
    """``lora`` rewritten as ``fmt`` in a new temporary folder; a PEFT folder comes back as a .zip."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    source = check_lora(lora)
    target = save_lora(load_lora(source), Path(tempfile.mkdtemp(prefix="tlcm-export-")) / EXPORT_NAMES[fmt], fmt)
    if target.is_dir():
        return Path(shutil.make_archive(str(target), "zip", root_dir=target))
    return target
