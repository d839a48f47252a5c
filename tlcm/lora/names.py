"""Turn kohya's flattened names back into module paths, using the module names of a model.

kohya replaces every dot with an underscore, which is not invertible on its own (``down_blocks`` vs
``down.blocks``), so names are looked up in the flattened names of real modules instead of parsed.
Each module is also indexed under its flattened SGM name (``input_blocks_4_1_transformer_blocks_0_attn1_to_q``),
the naming kohya's sd-scripts uses for SDXL LoRAs.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..sgm_names import unet_module_sgm_name
from .keys import flatten_name
from .weights import LoraFile


def flat_index(module_names: Iterable[str]) -> dict[str, str]:
    """flattened name (diffusers or SGM) -> module path; a name two modules share maps to ``""`` (ambiguous)."""
    index: dict[str, str] = {}
    for name in module_names:
        for alias in (name, _sgm_alias(name)):
            if alias:
                flat = flatten_name(alias)
                index[flat] = "" if index.get(flat, name) != name else name
    return index


def _sgm_alias(name: str) -> str | None:
    """SGM name of an SDXL UNet module; None outside the SDXL block layout and for the Downsample2D/Upsample2D
    containers, whose SGM name (``op``/``conv``) belongs to the convolution inside them."""
    if name.rpartition(".")[0].endswith(("downsamplers", "upsamplers")):
        return None
    try:
        return unet_module_sgm_name(name)
    except ValueError:
        return None


def lookup(lora: LoraFile, index: dict[str, str], module_names: set[str]) -> dict[str, str | None]:
    """LoRA module name -> model module path (None: no such module). Resolved names must match exactly."""
    found: dict[str, str | None] = {}
    for name in lora.modules:
        if lora.names_resolved:
            found[name] = name if name in module_names else None
            continue
        path = index.get(name)
        if path == "":
            raise ValueError(f"kohya name {name!r} fits several modules of the model; cannot resolve it")
        found[name] = path
    return found


def resolve_names(lora: LoraFile, module_names: Iterable[str]) -> LoraFile:
    """A copy of ``lora`` keyed by module paths; every flattened name must resolve."""
    if lora.names_resolved:
        return lora
    names = set(module_names)
    found = lookup(lora, flat_index(names), names)
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise ValueError(f"{len(missing)} of {len(found)} kohya module names are not modules of the reference model "
                         f"(e.g. {missing[:3]}); the LoRA is for another architecture")
    modules = {found[n]: m for n, m in lora.modules.items()}
    return replace(lora, modules=modules, names_resolved=True)
