"""Write a diffusers SDXL pipeline as one original-layout (Stability SGM) ``.safetensors`` checkpoint.

Most SDXL checkpoints people download are single files in SGM naming, loaded by ComfyUI, A1111 and
diffusers' ``from_single_file``. The tiny kit needs such a file so those loading routes are exercised
offline; this module renames diffusers tensors into that layout (the inverse of diffusers' single-file
conversion): UNet in ldm naming under ``model.diffusion_model.``, VAE under ``first_stage_model.``,
CLIP-L in transformers naming under ``conditioner.embedders.0.transformer.``, and the bigG tower in
open_clip naming (fused q/k/v ``in_proj``, transposed ``text_projection``) under
``conditioner.embedders.1.model.``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..sgm_names import unet_module_sgm_name

Tensors = Mapping[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                    "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def _split(key: str) -> tuple[str, str]:
    """('down_blocks.0.resnets.1.conv1', 'weight') from a parameter name."""
    module, _, param = key.rpartition(".")
    return module, param


def _rename_all(state_dict: Tensors, rename: Callable[[str], str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        module, param = _split(key)
        new_key = f"{rename(module)}.{param}"
        if new_key in out:
            raise ValueError(f"two tensors map to {new_key!r}; the model layout is not SDXL's")
        out[new_key] = tensor
    return out


def unet_to_sgm(state_dict: Tensors, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers ``UNet2DConditionModel`` tensors → ldm/SGM ``UNetModel`` names (no prefix)."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"per-block layers_per_block {layers!r} has no SGM layout; SDXL uses one int")
    with_attention = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    return _rename_all(state_dict, lambda m: unet_module_sgm_name(m, layers, with_attention))


def _vae_module(module: str, num_up_blocks: int) -> str:
    """ldm name of one diffusers AutoencoderKL module."""
    coder, _, rest = module.partition(".")
    if coder not in ("encoder", "decoder"):
        return module   # quant_conv, post_quant_conv
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)\.(.+)", rest)
    if m:
        direction, block, _, resnet, inner = m.groups()
        # ldm numbers decoder levels from the lowest resolution up, diffusers from the top down
        level = f"{direction}.{num_up_blocks - 1 - int(block) if direction == 'up' else block}"
        if resnet is not None:
            return f"{coder}.{level}.block.{resnet}.{_VAE_RESNET.get(inner, inner)}"
        return f"{coder}.{level}.{direction}sample.{inner}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", rest)
    if m:
        part, index, inner = m.groups()
        if part == "resnets":
            return f"{coder}.mid.block_{int(index) + 1}.{_VAE_RESNET.get(inner, inner)}"
        if inner not in _VAE_ATTENTION:
            raise ValueError(f"unknown VAE attention module {module!r}")
        return f"{coder}.mid.attn_1.{_VAE_ATTENTION[inner]}"
    return f"{coder}.{_VAE_TOP.get(rest, rest)}"


def vae_to_sgm(state_dict: Tensors, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers ``AutoencoderKL`` → ldm names; mid-block attention projections become 1x1 convs."""
    out = _rename_all(state_dict, lambda m: _vae_module(m, len(config["up_block_types"])))
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]
    return out


def _text_model_keys(state_dict: Tensors) -> dict[str, torch.Tensor]:
    """Names under ``text_model.`` whether or not this transformers version nests CLIPTextModel."""
    return {k if k.startswith("text_model.") or k == "text_projection.weight" else f"text_model.{k}": v
            for k, v in state_dict.items()}


def clip_l_to_sgm(state_dict: Tensors) -> dict[str, torch.Tensor]:
    """CLIP-L stays in transformers naming in SGM checkpoints, always nested under ``text_model.``."""
    return _text_model_keys(state_dict)


def open_clip_to_sgm(state_dict: Tensors) -> dict[str, torch.Tensor]:
    """``CLIPTextModelWithProjection`` → open_clip ``TextTransformer`` names with fused q/k/v."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _text_model_keys(state_dict).items():
        if key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()   # open_clip computes x @ text_projection
            continue
        module, param = _split(key.removeprefix("text_model."))
        if module == "embeddings.token_embedding":
            out["token_embedding.weight"] = tensor
        elif module == "embeddings.position_embedding":
            out["positional_embedding"] = tensor
        elif module == "final_layer_norm":
            out[f"ln_final.{param}"] = tensor
        else:
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", module)
            if m is None:
                raise ValueError(f"unknown CLIP text model tensor {key!r}")
            layer, inner = m.groups()
            block = f"transformer.resblocks.{layer}"
            qkv = re.fullmatch(r"self_attn\.([qkv])_proj", inner)
            if qkv:
                fused.setdefault(f"{block}.attn.in_proj_{param}", {})[qkv.group(1)] = tensor
            elif inner in _OPEN_CLIP_LAYER:
                out[f"{block}.{_OPEN_CLIP_LAYER[inner]}.{param}"] = tensor
            else:
                raise ValueError(f"unknown CLIP text model tensor {key!r}")
    for key, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{key}: q/k/v projections incomplete ({sorted(parts)})")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _prefixed(prefix: str, tensors: Tensors) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def sdxl_to_sgm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """All four SDXL networks of a diffusers pipeline as one SGM-layout state dict (contiguous tensors)."""
    state = {
        **_prefixed(UNET_PREFIX, unet_to_sgm(pipe.unet.state_dict(), pipe.unet.config)),
        **_prefixed(VAE_PREFIX, vae_to_sgm(pipe.vae.state_dict(), pipe.vae.config)),
        **_prefixed(CLIP_L_PREFIX, clip_l_to_sgm(pipe.text_encoder.state_dict())),
        **_prefixed(OPEN_CLIP_PREFIX, open_clip_to_sgm(pipe.text_encoder_2.state_dict())),
    }
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_sdxl_single_file(pipe, path: str | Path) -> Path:
    """Save ``pipe`` as one SGM-layout ``.safetensors`` file (what ComfyUI/A1111 load as an SDXL checkpoint)."""
    from safetensors.torch import save_file
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single-file checkpoints are written as .safetensors, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sdxl_to_sgm_state_dict(pipe), str(path), metadata={"format": "pt"})
    return path
