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


def is_tlcm_target(name: str) -> bool:
    return any(name == s or name.endswith("." + s) for s in TLCM_TARGET_SUFFIXES)


def tlcm_target_modules(unet: nn.Module) -> list[str]:
    """Names of the Linear/Conv2d modules of ``unet`` that a TLCM LoRA adapts (PEFT's suffix rule)."""
    return [name for name, mod in unet.named_modules()
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and is_tlcm_target(name)]


@functools.lru_cache(maxsize=1)
def sdxl_unet_module_names() -> tuple[str, ...]:
    """Every module name of a full SDXL UNet, built on the meta device (no memory, ~0.1 s).

    Needed to turn kohya's flattened names (``down_blocks_1_attentions_0_proj_in``) back into module
    paths when no model is at hand, e.g. ``tlcm lora convert x.safetensors out --to peft``.
    """
    import torch
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_STRUCTURE)
    return tuple(name for name, _ in unet.named_modules() if name)
