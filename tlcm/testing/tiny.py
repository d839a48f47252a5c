"""Tiny, seeded SDXL-architecture models for tests, demos and host checks: built offline in seconds.

Same classes and wiring as SDXL (text-time UNet with SDXL's block layout, two CLIP text encoders whose
penultimate states are concatenated, a projection-pooled second encoder, AutoencoderKL with an 8x
downsampling, SDXL's scheduler config), only narrow. Weights are random but fixed by ``seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..models.clip_tokenizer import write_clip_tokenizer
from ..schedules import NUM_TRAIN_TIMESTEPS, SDXL_BETA_END, SDXL_BETA_SCHEDULE, SDXL_BETA_START

TEXT_WIDTH_1 = 16          # CLIP-L stand-in hidden size; must differ from TEXT_WIDTH_2, because
                           # diffusers' single-file loader tells the two encoders apart by width
TEXT_WIDTH_2 = 32          # CLIP-bigG stand-in hidden size (= pooled projection size)
CROSS_ATTENTION_DIM = TEXT_WIDTH_1 + TEXT_WIDTH_2
ADDITION_TIME_EMBED_DIM = 256   # as SDXL: 6 size/crop ids x 256 sinusoidal features
LATENT_DOWNSCALE = 8

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=CROSS_ATTENTION_DIM,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=TEXT_WIDTH_2 + 6 * ADDITION_TIME_EMBED_DIM,
    norm_num_groups=32,
)

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
    scaling_factor=0.13025,
    force_upcast=False,
)

SCHEDULER_CONFIG: dict[str, Any] = dict(   # SDXL base 1.0's scheduler_config.json
    beta_start=SDXL_BETA_START, beta_end=SDXL_BETA_END, beta_schedule=SDXL_BETA_SCHEDULE,
    num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
    use_karras_sigmas=False, sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True,
    clip_sample=False,
)


def _text_config(width: int, act: str) -> dict[str, Any]:
    return dict(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, projection_dim=TEXT_WIDTH_2,
                hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build().eval()


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel
    return _seeded(seed, lambda: UNet2DConditionModel(**UNET_CONFIG))


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL
    return _seeded(seed + 1, lambda: AutoencoderKL(**VAE_CONFIG))


def tiny_text_encoders(seed: int = 0):
    """(CLIPTextModel, CLIPTextModelWithProjection) shaped like SDXL's pair, narrow."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    te1 = _seeded(seed + 2, lambda: CLIPTextModel(CLIPTextConfig(**_text_config(TEXT_WIDTH_1, "quick_gelu"))))
    te2 = _seeded(seed + 3, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(TEXT_WIDTH_2, "gelu"))))
    return te1, te2


def tiny_tokenizers(cache_dir: str | Path):
    """The real CLIP BPE tokenizers of SDXL (pad ``<|endoftext|>`` and ``!``), written under ``cache_dir``."""
    from transformers import CLIPTokenizer
    cache_dir = Path(cache_dir)
    tok1 = CLIPTokenizer.from_pretrained(write_clip_tokenizer(cache_dir / "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(write_clip_tokenizer(cache_dir / "tokenizer_2", pad_token="!"))
    return tok1, tok2


def tiny_sdxl_pipeline(cache_dir: str | Path, seed: int = 0):
    """An in-memory ``StableDiffusionXLPipeline`` of tiny seeded components (fp32, CPU)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    te1, te2 = tiny_text_encoders(seed)
    tok1, tok2 = tiny_tokenizers(cache_dir)
    return StableDiffusionXLPipeline(
        vae=tiny_vae(seed), text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
        unet=tiny_unet(seed), scheduler=EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG))


def tiny_controlnet(unet, seed: int = 0):
    """A ControlNet made from ``unet`` (as ``ControlNetModel.from_unet``) whose zero-initialised output
    convolutions get seeded random weights, so the control signal visibly reaches the UNet in tests."""
    from diffusers import ControlNetModel
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3).eval()
    generator = torch.Generator().manual_seed(seed + 4)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=generator))
    return controlnet
