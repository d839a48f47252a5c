"""TLCM LoRA files in the WebUI's Lora folder: find the ones the WebUI cannot apply, convert them beside.

The official TLCM LoRA is a PEFT adapter (``base_model.model.<module>.lora_A/lora_B``, no alpha); the WebUI's
Lora loader matches none of its keys and says nothing (0 modules applied, no message). Any
``.safetensors`` whose keys use PEFT or diffusers naming (``lora_A``/``lora_B``, ``lora.down``/``lora.up``)
is such a file. The fix is a kohya file with per-module ``.alpha`` written next to it by the core
converter (``tlcm.lora``: alpha 8 for the official rank-64 file, the scale the official loader applies),
used as ``<lora:NAME-kohya:1>``. Only key names are read for detection, so scanning is cheap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from safetensors import SafetensorError, safe_open

CONVERTED_SUFFIX = "-kohya"
_UNMATCHABLE_KEY = re.compile(r"\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$")
_GENERIC_STEMS = ("adapter_model", "pytorch_lora_weights")
_LORA_TAG = re.compile(r"<lora:([^:>]+)")


@dataclass(frozen=True)
class PeftLora:
    """A LoRA in PEFT/diffusers layout in the Lora folder and where its kohya conversion goes."""

    path: Path
    converted: Path

    @property
    def name(self) -> str:
        """The name the WebUI lists it under (what a user writes in ``<lora:NAME:1>``)."""
        return self.path.stem

    @property
    def converted_name(self) -> str:
        return self.converted.stem

    @property
    def is_converted(self) -> bool:
        return self.converted.is_file()


def converted_path(path: Path) -> Path:
    """``X.safetensors`` -> ``X-kohya.safetensors``; a generic PEFT file name takes its folder's name."""
    stem = path.parent.name if path.stem in _GENERIC_STEMS else path.stem
    return path.with_name(f"{stem}{CONVERTED_SUFFIX}.safetensors")


def needs_conversion(path: Path) -> bool:
    """True if the file's keys use PEFT/diffusers LoRA naming, which the WebUI's Lora loader cannot match."""
    with safe_open(str(path), framework="pt") as f:
        return any(_UNMATCHABLE_KEY.search(key) for key in f.keys())


def scan(lora_dir: str | Path, names: Iterable[str] | None = None) -> list[PeftLora]:
    """PEFT/diffusers-layout ``.safetensors`` under ``lora_dir`` (recursively), converted or not.

    ``names``: only files listed under these names (the ones a prompt uses). Files safetensors cannot open
    are left to the WebUI, which reports them when they are used.
    """
    root = Path(lora_dir)
    if not root.is_dir():
        return []
    wanted = None if names is None else set(names)
    found = []
    for path in sorted(root.rglob("*.safetensors")):
        if wanted is not None and path.stem not in wanted:
            continue
        try:
            if needs_conversion(path):
                found.append(PeftLora(path, converted_path(path)))
        except (OSError, SafetensorError):
            continue
    return found


def convert(item: PeftLora) -> str:
    """Write the kohya file with ``.alpha`` beside the original; returns the report shown in console and UI."""
    from tlcm.lora import load_lora, match_lora, save_lora, sdxl_unet_module_names
    lora = load_lora(item.path)
    report = match_lora(lora, sdxl_unet_module_names())
    save_lora(lora, item.converted, "kohya")
    scales = sorted({round(m.scale, 6) for m in lora.modules.values()})
    return (f"{item.path.name} -> {item.converted.name}: {report.summary()}; scale {'/'.join(f'{s:g}' for s in scales)}"
            f" (alpha/rank); use <lora:{item.converted_name}:1>")


def lora_names(prompts: Iterable[str]) -> set[str]:
    """Names used as ``<lora:NAME:...>`` in the prompts."""
    return {name for prompt in prompts for name in _LORA_TAG.findall(prompt or "")}


def warning_text(item: PeftLora) -> str:
    """What the user is told about a PEFT-layout file, with both ways out."""
    fix = (f"use <lora:{item.converted_name}:1> (already converted)" if item.is_converted else
           f"click \"Convert LoRA files\" in the TLCM accordion, or run in the extension folder: python -m "
           f"tlcm.cli lora convert \"{item.path}\" \"{item.converted}\" --to kohya; then use "
           f"<lora:{item.converted_name}:1>")
    return f"{item.path.name} is a PEFT/diffusers-layout LoRA: the WebUI applies 0 of its modules; {fix}"
