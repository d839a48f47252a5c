"""How many modules the WebUI's Lora extension really patched for each activated LoRA, per host.

- A1111 / reForge: each ``networks.loaded_networks`` entry keeps the modules it matched in ``net.modules``.
- Forge: ``net.modules`` stays empty (the patches live in the model patchers), so the count comes from
  ``forge_objects.unet`` / ``forge_objects.clip.patcher`` ``lora_patches``, keyed by
  ``(filename, strength_patch, strength_model, online_mode)`` with one entry per patched weight. Where that
  structure is not found the count is unknown (None) and nothing is reported: never a false alarm.

The file's own module count (distinct key prefixes) tells a partial match from a full one, and its metadata
the kind of model it was distilled from (``tlcm.lora.BaseKind``, written by tlcm-train).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from tlcm.lora import BaseKind

_LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_mid.weight", ".dora_scale")


@dataclass(frozen=True)
class AppliedLora:
    name: str
    applied: int | None      # modules the host patched; None: this host cannot tell
    in_file: int | None      # modules the file holds; None: unreadable or not a kohya-style file
    base: BaseKind | None = None   # the kind of model it was distilled from; None: not recorded

    def warning(self) -> str | None:
        """A one-line warning for a LoRA that patched nothing or only part of the file; else None."""
        if self.applied == 0:
            return f"LoRA {self.name} applied 0 modules (wrong model or unconverted PEFT file)"
        if self.applied is not None and self.in_file is not None and self.applied < self.in_file:
            return f"LoRA {self.name} applied {self.applied} of its {self.in_file} modules (partial match)"
        return None


def read_lora_file(path: str | Path | None) -> tuple[int | None, BaseKind | None]:
    """Distinct modules of a kohya-style LoRA file (key prefixes before ``.lora_down.weight`` etc.) and the
    base it records; (None, None) for a file that cannot be read."""
    if not path:
        return None, None
    try:
        with safe_open(str(path), framework="pt") as f:
            keys, metadata = list(f.keys()), f.metadata()
    except (OSError, SafetensorError, ValueError):
        return None, None
    prefixes = {key[:-len(suffix)] for key in keys for suffix in _LORA_SUFFIXES if key.endswith(suffix)}
    return len(prefixes) or None, BaseKind.from_metadata(metadata)


def _forge_patch_count(sd_model: Any, filename: str | None) -> int | None:
    objects = getattr(sd_model, "forge_objects", None)
    patchers = [getattr(objects, "unet", None), getattr(getattr(objects, "clip", None), "patcher", None)]
    tables = [getattr(p, "lora_patches", None) for p in patchers if p is not None]
    tables = [t for t in tables if isinstance(t, dict)]
    if not tables or filename is None:
        return None
    found = [patches for table in tables for ident, patches in table.items()
             if isinstance(ident, tuple) and ident and ident[0] == filename]
    return sum(len(patches) for patches in found) if found else None


def applied_loras(networks: Any, sd_model: Any) -> list[AppliedLora]:
    """One entry per LoRA the host's Lora extension activated for this generation."""
    forge = hasattr(sd_model, "forge_objects")
    out = []
    for net in getattr(networks, "loaded_networks", []):
        filename = getattr(getattr(net, "network_on_disk", None), "filename", None)
        if forge:
            applied = _forge_patch_count(sd_model, filename)
        else:
            modules = getattr(net, "modules", None)
            applied = len(modules) if modules is not None else None
        out.append(AppliedLora(str(getattr(net, "name", "?")), applied, *read_lora_file(filename)))
    return out
