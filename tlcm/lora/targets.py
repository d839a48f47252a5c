"""Which UNet modules TLCM adapts, and the module names of a full-size SDXL UNet.

The 14 suffixes are the ``target_modules`` of the official loader (``OPPO-Mente-Lab/TLCM`` inference.py),
matched with PEFT's rule: a module is targeted when its name equals a suffix or ends with ``.<suffix>``.
"""
from __future__ import annotations

import functools

from torch import nn

TLCM_TARGET_SUFFIXES: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)

# Structure-defining fields of stabilityai/stable-diffusion-xl-base-1.0 unet/config.json: enough to
# reproduce every module name without downloading anything.
SDXL_UNET_STRUCTURE = dict(
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


# The ``target_modules`` of the official FLUX.1-dev adapter (OPPOer/TLCMFlux adapter_config.json), diffusers
# ``FluxTransformer2DModel`` naming: attention and MLPs of both block kinds, the modulation ``linear`` layers,
# the input embedders and the time/text/guidance embedding MLPs.
TLCM_FLUX_TARGET_SUFFIXES: tuple[str, ...] = (
    "to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "context_embedder",
    "x_embedder", "linear", "linear_1", "linear_2", "proj_mlp", "add_k_proj", "add_q_proj", "add_v_proj",
    "to_add_out", "ff_context.net.0.proj", "ff_context.net.2",
)


def is_tlcm_target(name: str, suffixes: tuple[str, ...] = TLCM_TARGET_SUFFIXES) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def target_suffixes(model: nn.Module) -> tuple[str, ...]:
    """The TLCM targets of ``model``'s architecture: FLUX's for a FLUX transformer (it has single-stream
    blocks), the SDXL UNet's otherwise."""
    return TLCM_FLUX_TARGET_SUFFIXES if hasattr(model, "single_transformer_blocks") else TLCM_TARGET_SUFFIXES


def tlcm_target_modules(unet: nn.Module) -> list[str]:
    """Names of the Linear/Conv2d modules of ``unet`` (or a FLUX transformer) that a TLCM LoRA adapts
    (PEFT's suffix rule)."""
    suffixes = target_suffixes(unet)
    return [name for name, mod in unet.named_modules()
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and is_tlcm_target(name, suffixes)]


def _resnet(prefix: str, channels_in: int, channels_out: int) -> list[str]:
    names = [f"{prefix}.{part}" for part in ("norm1", "conv1", "time_emb_proj", "norm2", "conv2")]
    return names + ([f"{prefix}.conv_shortcut"] if channels_in != channels_out else [])


def _transformer(prefix: str, depth: int) -> list[str]:
    names = [f"{prefix}.norm", f"{prefix}.proj_in"]
    for k in range(depth):
        block = f"{prefix}.transformer_blocks.{k}"
        for attn in ("attn1", "attn2"):
            names += [f"{block}.{attn}.{proj}" for proj in ("to_q", "to_k", "to_v", "to_out.0")]
        names += [f"{block}.norm1", f"{block}.norm2", f"{block}.norm3", f"{block}.ff.net.0.proj", f"{block}.ff.net.2"]
    return names + [f"{prefix}.proj_out"]


@functools.lru_cache(maxsize=1)
def sdxl_unet_module_names() -> tuple[str, ...]:
    """Names of every weight-bearing module (Linear, Conv2d, norms) of the full SDXL UNet, diffusers naming.

    Derived from ``SDXL_UNET_STRUCTURE`` alone, the way diffusers' ``UNet2DConditionModel`` lays the blocks
    out, so that hosts can turn kohya's flattened names (``down_blocks_1_attentions_0_proj_in``) back into
    module paths (``tlcm lora convert``, the WebUI's Convert button) without importing diffusers.
    """
    s = SDXL_UNET_STRUCTURE
    widths, layers, depths = s["block_out_channels"], s["layers_per_block"], s["transformer_layers_per_block"]
    has_attention = [kind.startswith("CrossAttn") for kind in s["down_block_types"]]
    last = len(widths) - 1
    names = ["conv_in", "time_embedding.linear_1", "time_embedding.linear_2",
             "add_embedding.linear_1", "add_embedding.linear_2"]
    for b, width in enumerate(widths):
        for i in range(layers):
            channels_in = widths[max(b - 1, 0)] if i == 0 else width
            names += _resnet(f"down_blocks.{b}.resnets.{i}", channels_in, width)
            if has_attention[b]:
                names += _transformer(f"down_blocks.{b}.attentions.{i}", depths[b])
        if b < last:
            names.append(f"down_blocks.{b}.downsamplers.0.conv")
    names += _resnet("mid_block.resnets.0", widths[-1], widths[-1])
    names += _transformer("mid_block.attentions.0", depths[-1])
    names += _resnet("mid_block.resnets.1", widths[-1], widths[-1])
    for u in range(len(widths)):
        b = last - u                                   # up block u mirrors down block b
        width, previous = widths[b], widths[min(b + 1, last)]
        for i in range(layers + 1):
            skip = widths[max(b - 1, 0)] if i == layers else width
            names += _resnet(f"up_blocks.{u}.resnets.{i}", (previous if i == 0 else width) + skip, width)
            if has_attention[b]:
                names += _transformer(f"up_blocks.{u}.attentions.{i}", depths[b])
        if u < last:
            names.append(f"up_blocks.{u}.upsamplers.0.conv")
    return tuple(names + ["conv_norm_out", "conv_out"])
