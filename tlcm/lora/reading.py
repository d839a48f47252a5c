"""``load_lora``: any supported LoRA file or PEFT folder -> ``LoraFile``, with the alpha decided explicitly.

Alpha policy (the scale is ``alpha / rank``), first that applies:

1. ``alpha=`` given: used for every module (CLI ``--alpha``).
2. ``.alpha`` tensors in the file (kohya, some diffusers files).
3. PEFT layout (``base_model.model.*`` or bare ``lora_A/lora_B``): the config (``config=`` or the one JSON
   LoRA config beside the weights, any name). A config with r=64 on TLCM's targets and lora_alpha != 8
   is honoured but warned about: the official TLCM script ignores it and applies 8/64 = 0.125 (the
   "alpha trap"). Without any config: PEFT's default ``lora_alpha=8``, exactly what the official loader
   uses, stated in ``notes``.
4. Otherwise (diffusers ``unet.*``, kohya without ``.alpha``): alpha = rank, i.e. scale 1, as diffusers,
   ComfyUI and A1111 assume.

Nothing in the file is trusted: a damaged file, integer or boolean weights, mismatched shapes and NaN/Inf
(``tlcm.errors.NonFiniteError``) are errors naming the file and the tensor or module, before any merge.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ..file_readers import TENSOR_SUFFIXES, check_values, read_safetensors_metadata, read_state_dict
from .base import BaseKind
from .config import PEFT_DEFAULT_ALPHA, AdapterConfig, find_adapter_config
from .keys import ParsedKeys, parse_keys
from .weights import LoraFile, LoraModule

log = logging.getLogger(__name__)

_FOLDER_WEIGHT_NAMES = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "adapter_model.bin")


def locate_weights(path: Path) -> Path:
    """The weight file of ``path`` (itself, or the adapter file inside a folder)."""
    if not path.exists():
        raise FileNotFoundError(f"LoRA not found: {path}")
    if path.is_file():
        return path
    for name in _FOLDER_WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir() if p.suffix in TENSOR_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        raise ValueError(f"{path}: expected one LoRA weight file ({', '.join(TENSOR_SUFFIXES)}) in the folder, "
                         f"found {[p.name for p in candidates] or 'none'}; pass the file itself")
    return candidates[0]


def _resolve_config(parsed: ParsedKeys, weights: Path, config: str | Path | Mapping | AdapterConfig | None,
                    notes: list[str]) -> AdapterConfig | None:
    if config is not None and any("alpha" in t for t in parsed.parts.values()):
        raise ValueError(f"{weights} stores per-module alpha tensors, so a config would be ignored; drop the "
                         "config (or use alpha= to override the scale)")
    if isinstance(config, AdapterConfig):
        return config
    if isinstance(config, Mapping):
        return AdapterConfig.from_dict(config)
    if config is not None:
        return AdapterConfig.from_file(config)
    if parsed.family != "peft":
        return None
    found = find_adapter_config(weights.parent)
    if found is None:
        notes.append(f"no adapter config beside {weights.name}: lora_alpha={PEFT_DEFAULT_ALPHA} (PEFT's default, "
                     "as the official TLCM loader applies), scale = 8/rank")
        return AdapterConfig(source="PEFT defaults")
    notes.append(f"adapter config: {found.name}")
    return AdapterConfig.from_file(found)


def _module_alpha(name: str, rank: int, tensors: dict[str, torch.Tensor], cfg: AdapterConfig | None,
                  override: float | None) -> float:
    if cfg is not None and cfg.rank_for(name) not in (None, rank):
        raise ValueError(f"{cfg.source} gives it rank {cfg.rank_for(name)} but its tensors have rank {rank}: "
                         "the config belongs to another adapter")
    if override is not None:
        return float(override)
    if "alpha" in tensors:
        return float(tensors["alpha"].float().item())
    return cfg.alpha_for(name) if cfg is not None else float(rank)


def _module(name: str, tensors: dict[str, torch.Tensor], cfg: AdapterConfig | None,
            override: float | None) -> LoraModule:
    shaped = LoraModule(tensors["down"], tensors["up"], 1.0)     # checks the shapes before the rank is read
    return replace(shaped, alpha=_module_alpha(name, shaped.rank, tensors, cfg, override),
                   rslora=bool(cfg and cfg.use_rslora))


def _check_alpha_override(alpha: float | None) -> None:
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")


def load_lora(path: str | Path, *, config: str | Path | Mapping | AdapterConfig | None = None,
              alpha: float | None = None) -> LoraFile:
    """Read a UNet LoRA in PEFT, diffusers or kohya layout (file or PEFT folder). See the module doc for alpha.

    ``config``: a PEFT LoRA config (path, dict) overriding discovery; ``alpha``: one alpha for all modules.
    Text-encoder keys end up in ``LoraFile.skipped``; kohya names stay flattened (``names_resolved=False``).
    """
    _check_alpha_override(alpha)
    weights = locate_weights(Path(path))
    state = read_state_dict(weights)
    parsed = parse_keys(state, str(weights))
    check_values(state, str(weights), number_suffixes=(".alpha",))
    notes: list[str] = []
    cfg = _resolve_config(parsed, weights, config, notes)
    if cfg is not None and (warning := cfg.official_scale_warning()) and alpha is None:
        log.warning(warning)
        notes.append(warning)
    if alpha is not None:
        notes.append(f"alpha overridden: {alpha:g} for every module (scale {alpha:g}/rank)")
    if cfg is None and alpha is None and not all("alpha" in t for t in parsed.parts.values()):
        notes.append("no alpha stored: alpha = rank (scale 1), as diffusers, ComfyUI and A1111 assume")
    if not parsed.parts and parsed.skipped:
        notes.append(f"only text-encoder keys ({len(parsed.skipped)}): nothing applies to the UNet")
    modules = {}
    for name, tensors in parsed.parts.items():
        try:
            modules[name] = _module(name, tensors, cfg, alpha)
        except ValueError as err:
            raise ValueError(f"{weights}: module {name!r}: {err}") from err
    if parsed.skipped:
        log.warning("%s: %d text-encoder keys do not apply to the UNet and are not loaded",
                    weights, len(parsed.skipped))
    base = BaseKind.from_metadata(read_safetensors_metadata(weights))
    if base is not None:
        notes.append(f"distilled from a {base.describe()} model (recorded by tlcm-train)")
    return LoraFile(modules, parsed.family, notes, parsed.skipped, names_resolved=parsed.family != "kohya", base=base)
