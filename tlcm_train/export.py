"""Export the student adapter through the core's writers (``tlcm.lora.save_lora``): kohya (with .alpha),
diffusers (scale folded into up) and a PEFT folder, so ComfyUI, A1111/Forge, diffusers and the official
loader all apply it at the trained scale alpha / rank.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tlcm.lora import BaseKind, LoraFile, LoraModule, save_lora
from tlcm.models.device import DTYPE_NAMES

EXPORT_NAMES = {"kohya": "tlcm_lora_kohya.safetensors", "diffusers": "tlcm_lora_diffusers.safetensors",
                "peft": "tlcm_lora_peft"}


def student_lora_file(state: dict[str, torch.Tensor], alpha: float, base: BaseKind | None = None) -> LoraFile:
    """PEFT state (``<module>.lora_A.weight`` / ``lora_B``) -> ``LoraFile`` keyed by UNet module path;
    ``base``: the kind of model it was distilled from, recorded in every exported file."""
    modules = {}
    for key, down in state.items():
        if key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            modules[name] = LoraModule(down=down, up=state[f"{name}.lora_B.weight"], alpha=alpha)
    return LoraFile(modules=modules, source_format="peft", notes=["trained with tlcm train"], base=base)


def export_lora(state: dict[str, torch.Tensor], alpha: float, out_dir: Path, formats: list[str],
                save_dtype: str = "fp16", base: BaseKind | None = None) -> dict[str, Path]:
    """Write every requested format under ``out_dir``, each recording ``base``; returns {format: path}."""
    lora = student_lora_file(state, alpha, base)
    return {fmt: save_lora(lora, out_dir / EXPORT_NAMES[fmt], fmt, dtype=DTYPE_NAMES[save_dtype]) for fmt in formats}
