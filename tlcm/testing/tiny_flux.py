"""Tiny, seeded FLUX.1-architecture models for tests: built offline in seconds.

Same classes and wiring as FLUX.1-dev (``FluxTransformer2DModel`` with double- and single-stream blocks,
RoPE and the guidance embedding; a CLIP text encoder whose pooled output conditions the transformer; a T5
encoder whose states are the context; a 16x-per-token AutoencoderKL: 8x downsampling, then 2x2 packing;
FLUX.1-dev's scheduler config), only narrow. The CLIP tokenizer is the real BPE; the T5 tokenizer is a
Unigram stand-in over letters, since T5's SentencePiece model is a download. Weights are random but fixed
by ``seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..models.clip_tokenizer import write_clip_tokenizer

CLIP_WIDTH = 16            # CLIP-L stand-in hidden size (= pooled_projection_dim)
T5_WIDTH = 32              # T5-XXL stand-in hidden size (= joint_attention_dim)
LATENT_CHANNELS = 4        # FLUX: 16; packed 2x2 into in_channels = 4 x LATENT_CHANNELS

TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
    latent_channels=LATENT_CHANNELS, norm_num_groups=4, sample_size=64, scaling_factor=0.3611,
    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, force_upcast=False,
)

SCHEDULER_CONFIG: dict[str, Any] = dict(   # FLUX.1-dev's scheduler_config.json
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
)

T5_LETTERS = "▁abcdefghijklmnopqrstuvwxyz"


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build().eval()


def tiny_flux_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    return _seeded(seed, lambda: FluxTransformer2DModel(**TRANSFORMER_CONFIG))


def tiny_flux_pipeline(cache_dir: str | Path, seed: int = 0):
    """An in-memory ``FluxPipeline`` of tiny seeded components (fp32, CPU), with FLUX's Euler scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    clip = _seeded(seed + 1, lambda: CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)))
    t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0 - i) for i, c in enumerate(T5_LETTERS)]
    t5 = _seeded(seed + 2, lambda: T5EncoderModel(T5Config(
        vocab_size=len(t5_vocab), d_model=T5_WIDTH, d_kv=8, d_ff=2 * T5_WIDTH, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
        vae=_seeded(seed + 3, lambda: AutoencoderKL(**VAE_CONFIG)),
        text_encoder=clip, tokenizer=CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(cache_dir) / "tokenizer")),
        text_encoder_2=t5, tokenizer_2=T5TokenizerFast(vocab=t5_vocab, extra_ids=0),
        transformer=tiny_flux_transformer(seed))
