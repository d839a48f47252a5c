"""Original Stability (ldm/SGM) names of SDXL UNet modules, from their diffusers names.

Single-file checkpoints and kohya's sd-scripts SDXL LoRAs (``lora_unet_input_blocks_4_1_...``) use these
names; the tiny kit's single-file writer and the LoRA reader both need the same mapping.
"""
from __future__ import annotations

import re

SDXL_LAYERS_PER_BLOCK = 2
SDXL_UP_BLOCKS_WITH_ATTENTION = frozenset({0, 1})

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_module_sgm_name(module: str, layers_per_block: int = SDXL_LAYERS_PER_BLOCK,
                         up_blocks_with_attention: frozenset[int] | set[int] = SDXL_UP_BLOCKS_WITH_ATTENTION) -> str:
    """ldm name of one diffusers UNet module (SDXL's UNetModel: input/middle/output_blocks)."""
    if module in UNET_TOP:
        return UNET_TOP[module]
    n = layers_per_block + 1   # ldm input/output blocks per diffusers block (up blocks: one more resnet)
    m = re.fullmatch(r"(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?(resnets|attentions|downsamplers|upsamplers)"
                     r"\.(\d+)\.?(.*)", module)
    if m is None:
        raise ValueError(f"unknown SDXL UNet module {module!r}")
    kind, block, part, index, rest = m.group(1), int(m.group(2) or 0), m.group(3), int(m.group(4)), m.group(5)
    if part == "resnets":
        rest = UNET_RESNET.get(rest, rest)
    if kind == "mid_block":
        return f"middle_block.{2 * index if part == 'resnets' else 1}.{rest}"
    if kind == "down_blocks":
        if part == "downsamplers":
            return f"input_blocks.{(block + 1) * n}.0.op"
        return f"input_blocks.{1 + block * n + index}.{0 if part == 'resnets' else 1}.{rest}"
    if part == "upsamplers":
        slot = 2 if block in up_blocks_with_attention else 1
        return f"output_blocks.{block * n + layers_per_block}.{slot}.conv"
    return f"output_blocks.{block * n + index}.{0 if part == 'resnets' else 1}.{rest}"
