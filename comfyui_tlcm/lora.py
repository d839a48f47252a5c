"""Apply a TLCM LoRA (official PEFT, diffusers or kohya) to a ComfyUI model through the core's conversion.

ComfyUI's own loader finds 0 modules of the official PEFT file and no alpha in it (8x too strong). Here
the core reads any format with the right alpha, matches it against the model's diffusers module names,
writes keys ComfyUI's own LoRA patching knows with a per-module ``.alpha`` (SDXL: kohya; FLUX: diffusers
module paths, which ComfyUI maps onto its fused qkv / linear1 weights by row slices), so the weights
ComfyUI computes are the core's ``strength * alpha/rank * up @ down``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import logging

import comfy.lora
import comfy.model_base
import comfy.model_sampling
import comfy.utils
import torch

from ..tlcm.lora import (TLCM_FLUX_TARGET_SUFFIXES, TLCM_TARGET_SUFFIXES, BaseKind, LoraFile, LoraMatchError,
                         base_mismatch, load_lora, match_lora, to_kohya_state_dict)
from ..tlcm.lora.reading import locate_weights, read_state_dict


log = logging.getLogger(__name__)


@dataclass
class AppliedLora:
    model: object
    clip: object | None
    report: str


def is_flux(model) -> bool:
    return isinstance(model.model, comfy.model_base.Flux)


def _diffusers_to_comfy(model, weights: dict) -> dict[str, tuple[int, ...]]:
    """diffusers module path -> the shape its LoRA delta must have, for the weights this model has.

    ComfyUI's maps list every key a layout could have (e.g. shortcuts a block lacks): keep real ones. A FLUX
    entry is a ComfyUI key, or (key, (dim, offset, size)) for a slice of a fused weight (q, k, v and the
    single blocks' MLP input share ``linear1``), or (key, None, transform) for a weight ComfyUI reorders.
    """
    config = model.model.model_config.unet_config
    if is_flux(model):
        mapping = comfy.utils.flux_to_diffusers(config, output_prefix="diffusion_model.")
    else:
        mapping = {k: f"diffusion_model.{v}" for k, v in comfy.utils.unet_to_diffusers(config).items()}
    shapes = {}
    for name, target in mapping.items():
        key = target if isinstance(target, str) else target[0]
        if not name.endswith(".weight") or key not in weights:
            continue
        shape = list(weights[key].shape)
        if not isinstance(target, str) and target[1] is not None:
            dim, _, size = target[1]
            shape[dim] = size
        shapes[name.removesuffix(".weight")] = tuple(shape)
    return shapes


def _check_shapes(lora: LoraFile, matched: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> None:
    """A LoRA made for a differently sized model would only be logged and skipped by ComfyUI: fail instead."""
    wrong = [f"{path}: LoRA {lora.modules[name].delta_shape} vs {shapes[path]}"
             for name, path in matched.items()
             if math.prod(lora.modules[name].delta_shape) != math.prod(shapes[path])
             or lora.modules[name].delta_shape[0] != shapes[path][0]]
    if wrong:
        raise LoraMatchError(f"{len(wrong)} of {len(matched)} matched LoRA modules do not fit this model's weights "
                             f"(e.g. {wrong[:2]}): the LoRA was made for another architecture")


def _flux_state_dict(lora: LoraFile, matched: dict[str, str]) -> dict:
    """diffusers-path keys (``<path>.lora_A/lora_B.weight``, ``<path>.alpha``), as ComfyUI maps FLUX LoRAs."""
    out = {}
    for name, path in matched.items():
        module = lora.modules[name]
        out[f"{path}.lora_A.weight"], out[f"{path}.lora_B.weight"] = module.down, module.up
        out[f"{path}.alpha"] = torch.tensor(module.scale * module.rank, dtype=torch.float32)
    return out


def model_kind(model) -> BaseKind | None:
    """The kind of a ComfyUI model as its model sampling defines it (None: neither ε nor v, e.g. flow)."""
    sampling = model.get_model_object("model_sampling")
    zero_snr = bool(getattr(sampling, "zsnr", False))
    if isinstance(sampling, comfy.model_sampling.V_PREDICTION):     # a subclass of EPS: test it first
        return BaseKind("v_prediction", zero_snr)
    if isinstance(sampling, comfy.model_sampling.EPS):
        return BaseKind("epsilon", zero_snr)
    return None


def _patch_clip(clip, path: Path, lora: LoraFile, strength: float) -> tuple[object, int]:
    """Text-encoder keys of the file (the core ignores them) through ComfyUI's own CLIP key map."""
    if clip is None or not lora.skipped:
        return clip, 0
    raw = read_state_dict(locate_weights(path))
    te = {k: raw[k] for k in lora.skipped if k in raw}
    patches = comfy.lora.load_lora(te, comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}), log_missing=False)
    new_clip = clip.clone()
    return new_clip, len(new_clip.add_patches(patches, strength))


def apply_tlcm_lora(model, clip, path: str | Path, strength: float) -> AppliedLora:
    """Patch ``model`` (and ``clip`` if the file has text-encoder keys); raises ``LoraMatchError`` on no fit.

    The errors raised here leave the file unnamed: the node prefixes the name the user picked
    (``errors.user_errors``).
    """
    path = Path(path)
    lora = load_lora(path)
    flux = is_flux(model)
    shapes = _diffusers_to_comfy(model, model.model_state_dict())
    report = match_lora(lora, set(shapes), target_suffixes=TLCM_FLUX_TARGET_SUFFIXES if flux else TLCM_TARGET_SUFFIXES)
    _check_shapes(lora, report.matched, shapes)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    state = _flux_state_dict(lora, report.matched) if flux else to_kohya_state_dict(lora)
    patches = comfy.lora.load_lora(state, key_map, log_missing=False)
    new_model = model.clone()
    patched = new_model.add_patches(patches, strength)
    if not patched:
        raise LoraMatchError(f"ComfyUI patched 0 of {len(report.matched)} matched modules")
    new_clip, clip_patched = _patch_clip(clip, path, lora, strength)
    scales = sorted({f"{m.scale:g}" for m in lora.modules.values()})
    lines = [f"{path.name}: {lora.source_format} LoRA, {len(patched)}/{len(lora.modules)} modules patched in "
             f"the {'FLUX transformer' if flux else 'UNet'} at strength {strength:g} (scale alpha/rank "
             f"{', '.join(scales)})",
             report.summary()]
    if lora.skipped:
        lines.append(f"text encoder: {clip_patched} weights patched from {len(lora.skipped)} keys"
                     + ("" if clip is not None else " (no CLIP connected)"))
    lines += [f"note: {n}" for n in lora.notes]
    kind = model_kind(model)
    if kind is not None and (warning := base_mismatch(lora.base, kind, path.name)):
        log.warning("TLCM: %s", warning)
        lines.insert(0, f"WARNING: {warning}")
    return AppliedLora(new_model, new_clip, "\n".join(lines))
