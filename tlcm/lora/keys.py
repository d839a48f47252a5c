"""Recognise LoRA key layouts and group a flat state dict into per-module down/up/alpha tensors.

Layouts (``family`` decides the default alpha, see ``tlcm.lora.reading``):

- ``peft``: ``base_model.model.<path>.lora_A/lora_B.weight`` (official TLCM adapter) or bare ``<path>.lora_A...``;
- ``diffusers``: ``unet.<path>.lora.down/up.weight``, ``unet.<path>.lora_A/B.weight``, diffusers'
  attention-processor naming (files saved before its PEFT backend) ``<path>.processor.to_q_lora.down.weight``
  (with or without ``unet.``), optional ``.alpha``;
- ``kohya``: ``lora_unet_<path with _>.lora_down/lora_up.weight`` + ``.alpha``; names stay flattened.

Text-encoder keys (``lora_te*``, ``text_encoder*.``, ``*text_model.*``) are returned as ``skipped``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

_TEXT_ENCODER = re.compile(r"^(lora_te\d?_|text_encoder(_2)?\.|(base_model\.model\.)?text_model\.)")
_KOHYA = re.compile(r"^lora_unet_(?P<name>.+?)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
_PROCESSOR = re.compile(r"^(?P<prefix>unet\.)?(?P<name>.+)\.processor\."
                        r"(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down\.weight|up\.weight)$")
_GENERIC = re.compile(r"^(?P<prefix>base_model\.model\.|unet\.)?(?P<name>.+?)\."
                      r"(?P<part>lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|alpha)$")

_PART = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up",
         "lora.down.weight": "down", "lora.up.weight": "up", "down.weight": "down", "up.weight": "up",
         "alpha": "alpha"}


@dataclass
class ParsedKeys:
    family: str
    parts: dict[str, dict[str, torch.Tensor]]          # module name -> {"down", "up"[, "alpha"]}
    skipped: list[str] = field(default_factory=list)  # text-encoder keys


def _classify(key: str) -> tuple[str, str, str] | None:
    """(family, module name, part) for a UNet LoRA key, None if the key is not one."""
    if m := _KOHYA.match(key):
        return "kohya", m["name"], _PART[m["part"]]
    if m := _PROCESSOR.match(key):
        name = f"{m['name']}.{m['proj']}" + (".0" if m["proj"] == "to_out" else "")
        return "diffusers", name, _PART[m["part"]]
    if m := _GENERIC.match(key):
        prefix, part = m["prefix"], m["part"]
        family = "diffusers" if prefix == "unet." or part.startswith("lora.") else "peft"
        return family, m["name"], _PART[part]
    return None


def parse_keys(state_dict: dict[str, torch.Tensor], source: str) -> ParsedKeys:
    """Group ``state_dict`` by module; unknown keys, mixed layouts and half-modules are errors."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    families: set[str] = set()
    skipped: list[str] = []
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if _TEXT_ENCODER.match(key):
            skipped.append(key)
            continue
        found = _classify(key)
        if found is None:
            unknown.append(key)
            continue
        family, name, part = found
        families.add(family)
        if part in parts.setdefault(name, {}):
            raise ValueError(f"{source}: two keys give the {part} tensor of module {name!r} (second: {key!r}); "
                             "the file mixes naming schemes for the same module")
        parts[name][part] = tensor
    if unknown:
        what = ("no LoRA keys at all" if not parts and not skipped
                else f"{len(unknown)} keys that are not plain LoRA down/up/alpha tensors")
        raise ValueError(f"{source}: {what} (e.g. {unknown[:3]}). Supported: PEFT lora_A/lora_B, diffusers "
                         "lora.down/lora.up, kohya lora_down/lora_up/alpha (diffusers or SGM module names); DoRA, "
                         "LoHa/LoKr, biases and diffusion_model.* keys are not supported")
    if len(families) > 1:
        raise ValueError(f"{source}: mixes key layouts {sorted(families)}; convert each part separately")
    for name, tensors in parts.items():
        missing = {"down", "up"} - tensors.keys()
        if missing:
            raise ValueError(f"{source}: module {name!r} has no {'/'.join(sorted(missing))} tensor; "
                             "the file is truncated or not a LoRA")
    if not parts and not skipped:
        raise ValueError(f"{source}: the file holds no tensors")
    return ParsedKeys(families.pop() if families else "text-encoder only", parts, skipped)


def flatten_name(name: str) -> str:
    """kohya's module naming: dots become underscores (``a.b_c.0`` -> ``a_b_c_0``)."""
    return name.replace(".", "_")
