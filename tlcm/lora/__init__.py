"""TLCM LoRA files: read any common layout, fix the scale (the alpha trap), convert, match, merge.

Public API (stable; used by the ComfyUI and WebUI adapters): ``load_lora``, ``save_lora``,
``match_lora``, ``merge_lora``, ``to_kohya_state_dict``, ``tlcm_target_modules``, ``LoraMatchError``,
``BaseKind`` / ``base_mismatch`` (the base a LoRA was distilled from).
"""
from .base import BaseKind, base_mismatch
from .config import AdapterConfig
from .match import LoraMatchError, MatchReport, match_lora, merge_lora
from .names import resolve_names
from .reading import load_lora
from .targets import TLCM_FLUX_TARGET_SUFFIXES, TLCM_TARGET_SUFFIXES, sdxl_unet_module_names, tlcm_target_modules
from .weights import LoraFile, LoraModule
from .writing import FORMATS, save_lora, to_diffusers_state_dict, to_kohya_state_dict, to_peft

__all__ = [
    "AdapterConfig", "BaseKind", "FORMATS", "LoraFile", "LoraMatchError", "LoraModule", "MatchReport",
    "TLCM_FLUX_TARGET_SUFFIXES", "TLCM_TARGET_SUFFIXES", "base_mismatch", "load_lora", "match_lora", "merge_lora",
    "resolve_names", "save_lora", "sdxl_unet_module_names", "tlcm_target_modules", "to_diffusers_state_dict",
    "to_kohya_state_dict", "to_peft",
]
