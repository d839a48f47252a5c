"""``save_lora``: write a ``LoraFile`` in the layout a host loads at the intended scale.

- ``kohya`` (ComfyUI, A1111, Forge): ``lora_unet_<path _>.lora_down/lora_up.weight`` plus a per-module
  ``.alpha`` = scale x rank, because those hosts use scale 1.0 when ``.alpha`` is missing.
- ``diffusers``: ``unet.<path>.lora.down/up.weight`` with ``up`` pre-multiplied by the scale: diffusers
  0.42 ``load_lora_weights`` reads no alpha for ``unet.*`` files and assumes alpha = rank.
- ``peft``: a folder with ``adapter_config.json`` (explicit r, lora_alpha, exact target module paths,
  rank/alpha patterns for the exceptions) and ``adapter_model.safetensors`` (``base_model.model.*``).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from ..files import atomic_save_safetensors, atomic_write_text, check_writable
from .keys import flatten_name
from .names import resolve_names
from .targets import sdxl_unet_module_names
from .weights import LoraFile, LoraModule

FORMATS = ("kohya", "diffusers", "peft")
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return (t if dtype is None else t.to(dtype)).contiguous()


def _nonempty(lora: LoraFile) -> LoraFile:
    if not lora.modules:
        raise ValueError(f"the LoRA has no UNet modules to write ({len(lora.skipped)} text-encoder keys only)")
    return lora


def _with_paths(lora: LoraFile) -> LoraFile:
    """Module paths are needed for diffusers/PEFT keys: resolve kohya names against the SDXL UNet."""
    return lora if lora.names_resolved else resolve_names(lora, sdxl_unet_module_names())


def to_kohya_state_dict(lora: LoraFile, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """kohya keys with a float32 ``.alpha`` per module (= scale x rank, so alpha/rank is the exact scale)."""
    out: dict[str, torch.Tensor] = {}
    for name, mod in _nonempty(lora).modules.items():
        key = "lora_unet_" + flatten_name(name)
        out[f"{key}.lora_down.weight"] = _cast(mod.down, dtype)
        out[f"{key}.lora_up.weight"] = _cast(mod.up, dtype)
        out[f"{key}.alpha"] = torch.tensor(mod.scale * mod.rank, dtype=torch.float32)
    return out


def to_diffusers_state_dict(lora: LoraFile, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``unet.<path>.lora.down/up.weight`` with the scale folded into ``up`` (diffusers assumes alpha = rank)."""
    out: dict[str, torch.Tensor] = {}
    for name, mod in _with_paths(_nonempty(lora)).modules.items():
        up_dtype = mod.up.dtype if dtype is None else dtype
        out[f"unet.{name}.lora.down.weight"] = _cast(mod.down, dtype)
        out[f"unet.{name}.lora.up.weight"] = (mod.up.float() * mod.scale).to(up_dtype).contiguous()
    return out


def _peft_alpha(mod: LoraModule, rslora: bool) -> float:
    return mod.alpha if rslora else mod.scale * mod.rank


def to_peft(lora: LoraFile, dtype: torch.dtype | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config dict, ``base_model.model.*`` state dict) that ``PeftModel.from_pretrained`` accepts.

    r and lora_alpha are the most common values; modules that differ get pattern entries keyed by their full
    path, which PEFT's current rule (``(.*\.)?(key)$``) matches exactly. Uniform adapters (TLCM) need none.
    """
    lora = _with_paths(_nonempty(lora))
    mods = lora.modules
    rslora = all(m.rslora for m in mods.values())
    alphas = {n: _peft_alpha(m, rslora) for n, m in mods.items()}
    r = Counter(m.rank for m in mods.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
        "r": r, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha, "use_rslora": rslora,
        "target_modules": sorted(mods), "rank_pattern": {n: m.rank for n, m in mods.items() if m.rank != r},
        "alpha_pattern": {n: a for n, a in alphas.items() if a != alpha},
        "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True, "use_dora": False, "modules_to_save": None,
    }
    state = {}
    for name, mod in mods.items():
        state[f"base_model.model.{name}.lora_A.weight"] = _cast(mod.down, dtype)
        state[f"base_model.model.{name}.lora_B.weight"] = _cast(mod.up, dtype)
    return config, state


def _check_target(path: Path, fmt: str, overwrite: bool) -> None:
    """Refuse before any conversion work: a taken name without ``overwrite``, or a file/folder mix-up."""
    if fmt == "peft":
        if path.suffix:
            raise ValueError(f"a PEFT adapter is a folder; got a file name {path} (drop the {path.suffix})")
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; a PEFT adapter is written as a folder")
    else:
        if path.suffix != ".safetensors":
            raise ValueError(f"{fmt} LoRAs are written as .safetensors; got {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a folder; {fmt} LoRAs are single .safetensors files")
    check_writable(path, overwrite=overwrite)


def save_lora(lora: LoraFile, path: str | Path, fmt: str, *, dtype: torch.dtype | None = None,
              overwrite: bool = True) -> Path:
    """Write ``lora`` as ``fmt`` (kohya/diffusers: a .safetensors file; peft: a folder). Returns the path.

    ``dtype`` casts the weight tensors (None keeps the file's dtype; kohya ``.alpha`` stays float32).
    Every file is written atomically (``tlcm.files``), so a reader never sees half a LoRA. ``overwrite``
    defaults to True for library callers, which name their own outputs (hosts number them, the trainer owns
    its run folder); ``tlcm lora convert`` passes False unless ``--force``, so a typed path never clobbers
    a user's file. With False an existing target (for peft: the folder) is a ``FileExistsError``.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown LoRA format {fmt!r}; choose one of {', '.join(FORMATS)}")
    _check_target(path, fmt, overwrite)
    metadata = {"format": "pt", **(lora.base.to_metadata() if lora.base else {})}
    if fmt == "peft":
        config, state = to_peft(lora, dtype)
        atomic_save_safetensors(path / PEFT_WEIGHTS_NAME, state, metadata, overwrite=overwrite)
        atomic_write_text(path / PEFT_CONFIG_NAME, json.dumps(config, indent=2) + "\n", overwrite=overwrite)
        return path
    state = to_kohya_state_dict(lora, dtype) if fmt == "kohya" else to_diffusers_state_dict(lora, dtype)
    atomic_save_safetensors(path, state, metadata, overwrite=overwrite)
    return path
