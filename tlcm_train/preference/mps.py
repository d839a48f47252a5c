"""MPS (Multi-dimensional Preference Score, Zhang et al., CVPR 2024), the scorer behind TLCM's Eq. 11.

Re-implemented from reading Kwai-Kolors/MPS (MIT licence, ``trainer/models/clip_model.py``,
``cross_modeling.py`` and its evaluation scripts); no upstream code is copied. The architecture:
CLIP-ViT-H-14 token features (text: all 77 projected tokens; image: all 257 projected tokens of the last
layer, *before* CLIP's post-layernorm), a 4-layer "cross model" in which the image tokens attend to the
prompt tokens that are relevant to a fixed *condition* text (the "overall" condition lists the quality
dimensions), each layer a PaLM-style multi-query cross-attention with a parallel SwiGLU feed-forward and a
parallel self-attention block with rotary positions. The score is exp(logit_scale) x the cosine between
the first output token and the prompt's EOS feature, i.e. on CLIP's logit scale (up to 100).

Parameter names follow the upstream module tree, so a state dict of the released model loads as is.
Deviations, all for training use: the image path is differentiable (tensor-op preprocessing instead of
CLIPImageProcessor's PIL resize); the prompt-relevance normalisation is per sample (upstream divides by
the batch maximum, which couples the samples of a batch and equals ours for the batch of one its
evaluation scripts score); text features are computed without a graph (the scorer is frozen).

The released "overall" checkpoint (``MPS_overall_checkpoint.pth``) is a pickled whole model, not a state
dict: convert it once with ``python -m tlcm_train.preference.mps_convert convert SRC DST.safetensors``
(tlcm_train/preference/mps_convert.py); this module reads only plain tensor files.
"""
from __future__ import annotations

import math
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from transformers.initialization import no_init_weights
except ImportError:                     # transformers 4.x
    from transformers.modeling_utils import no_init_weights
from transformers import CLIPConfig, CLIPModel

OVERALL_CONDITION = ("light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, "
                     "structure, instance, texture, quantity, attributes, position, number, location, word, things.")
RELEVANCE_THRESHOLD = 0.3    # upstream's evaluation scripts (its training forward uses 0.01)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
STALE_KEYS = ("position_ids",)   # persistent buffers in the transformers 4.27 the checkpoint was pickled with


@dataclass(frozen=True)
class CrossConfig:
    """The cross model's shape; ``dim`` must equal the CLIP projection size."""
    dim: int = 1024
    layers: int = 4
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 4


def clip_vit_h14_config() -> CLIPConfig:
    """laion/CLIP-ViT-H-14-laion2B-s32B-b79K (open_clip ``ViT-H-14``): 1024-d text x 24 layers, 1280-d
    vision x 32 layers, patch 14 at 224 px, GELU, 1024-d projections."""
    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu"),
        projection_dim=1024, logit_scale_init_value=math.log(100.0))


class _GainOnlyLayerNorm(nn.Module):
    """LayerNorm with a learned gain and no learned shift; the zero shift is a buffer because the
    upstream checkpoints store it."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class _SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.silu(gate)


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x, *args)


class _Rotary(nn.Module):
    def __init__(self, dim_head: int):
        super().__init__()
        self.register_buffer("inv_freq", 10000.0 ** (-torch.arange(0, dim_head, 2).float() / dim_head))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotary position embedding over the token axis (-2), half-split pairing."""
        angles = torch.outer(torch.arange(x.shape[-2], device=x.device, dtype=torch.float32),
                             self.inv_freq.float())
        angles = torch.cat([angles, angles], dim=-1)
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return (x * angles.cos().to(x.dtype)) + rotated * angles.sin().to(x.dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-query attention: q (B, H, N, D) against one key/value head k, v (B, M, D); ``bias`` is
    added to the (B, N, M) logits (0 / -inf masks)."""
    logits = torch.einsum("bhnd,bmd->bhnm", q * q.shape[-1] ** -0.5, k)
    if bias is not None:
        logits = logits + bias.unsqueeze(1)
    weights = logits.float().softmax(dim=-1).to(v.dtype)
    out = torch.einsum("bhnm,bmd->bhnd", weights, v)
    return out.transpose(1, 2).flatten(2)


class _CrossAttention(nn.Module):
    """Image tokens (queries) attend to prompt tokens; a SwiGLU feed-forward runs in parallel."""

    def __init__(self, c: CrossConfig):
        super().__init__()
        self.heads = c.heads
        self.norm = _GainOnlyLayerNorm(c.dim)
        self.to_q = nn.Linear(c.dim, c.heads * c.dim_head, bias=False)
        self.to_kv = nn.Linear(c.dim, 2 * c.dim_head, bias=False)
        self.to_out = nn.Linear(c.heads * c.dim_head, c.dim, bias=False)
        self.ff = nn.Sequential(nn.Linear(c.dim, 2 * c.ff_mult * c.dim, bias=False), _SwiGLU(),
                                nn.Linear(c.ff_mult * c.dim, c.dim, bias=False))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q = self.to_q(h).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self.to_out(_attend(q, k, v, mask)) + self.ff(h)


class _ParallelBlock(nn.Module):
    """Self-attention over the image tokens (rotary, multi-query) in parallel with a SwiGLU feed-forward,
    one fused input projection."""

    def __init__(self, c: CrossConfig):
        super().__init__()
        self.heads = c.heads
        self.norm = _GainOnlyLayerNorm(c.dim)
        self.splits = (c.heads * c.dim_head, c.dim_head, c.dim_head, 2 * c.ff_mult * c.dim)
        self.rotary_emb = _Rotary(c.dim_head)
        self.fused_attn_ff_proj = nn.Linear(c.dim, sum(self.splits), bias=False)
        self.attn_out = nn.Linear(c.heads * c.dim_head, c.dim, bias=False)
        self.ff_out = nn.Sequential(_SwiGLU(), nn.Linear(c.ff_mult * c.dim, c.dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, ff = self.fused_attn_ff_proj(self.norm(x)).split(self.splits, dim=-1)
        q = self.rotary_emb.rotate(q.unflatten(-1, (self.heads, -1)).transpose(1, 2))
        return self.attn_out(_attend(q, self.rotary_emb.rotate(k), v)) + self.ff_out(ff)


class CrossModel(nn.Module):
    def __init__(self, c: CrossConfig):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([_Residual(_CrossAttention(c)), _Residual(_ParallelBlock(c))])
                                    for _ in range(c.layers))

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = image_tokens
        for cross, block in self.layers:
            x = block(cross(x, text_tokens, mask))
        return x


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIPImageProcessor's resize (short side, bicubic), centre crop and normalisation as tensor ops, so
    gradients reach ``images`` ((B, 3, H, W) in [0, 1])."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (rh - size) // 2, (rw - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class MPSModel(nn.Module):
    """CLIP (``model``) + cross model (``cross_model``): the upstream module tree."""

    def __init__(self, clip_config: CLIPConfig, cross: CrossConfig = CrossConfig()):
        super().__init__()
        if cross.dim != clip_config.projection_dim:
            raise ValueError(f"cross model dim {cross.dim} != CLIP projection_dim {clip_config.projection_dim}")
        self.model = CLIPModel(clip_config)
        self.cross_model = CrossModel(cross)

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    def text_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected features of all prompt tokens (B, 77, P) and of the EOS token (B, P); CLIP's EOS is
        the highest id of its vocabulary, so argmax finds it whatever the padding token."""
        hidden = self.model.text_model(input_ids=ids).last_hidden_state
        tokens = self.model.text_projection(hidden)
        return tokens, tokens[torch.arange(len(ids), device=ids.device), ids.argmax(dim=-1)]

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).last_hidden_state)

    def forward(self, pixels: torch.Tensor, prompt_ids: torch.Tensor, condition_ids: torch.Tensor,
                threshold: float = RELEVANCE_THRESHOLD) -> torch.Tensor:
        """Scores (B,) of CLIP-normalised ``pixels`` against tokenised prompts under a condition text."""
        with torch.no_grad():
            text, eos = self.text_tokens(prompt_ids)
            condition, _ = self.text_tokens(condition_ids)
            relevance = torch.einsum("bid,bjd->bij", text, condition).amax(dim=-1)      # (B, 77)
            relevance = relevance / relevance.amax(dim=-1, keepdim=True)
            mask = torch.zeros_like(relevance).masked_fill(relevance <= threshold, float("-inf")).unsqueeze(1)
        feature = self.cross_model(self.image_tokens(pixels), text, mask)[:, 0]
        cosine = F.cosine_similarity(feature.float(), eos.float(), dim=-1)
        return self.model.logit_scale.float().exp() * cosine


class MPSScorer(nn.Module):
    """The :class:`~tlcm_train.preference.scorer.Scorer` around an :class:`MPSModel` and its CLIP tokenizer."""

    def __init__(self, model: MPSModel, tokenizer: Any, condition: str = OVERALL_CONDITION,
                 threshold: float = RELEVANCE_THRESHOLD):
        super().__init__()
        self.mps, self.tokenizer, self.condition, self.threshold = model, tokenizer, condition, threshold

    def _ids(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, max_length=self.tokenizer.model_max_length, padding="max_length",
                              truncation=True, return_tensors="pt").input_ids

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        param = next(self.mps.parameters())
        # resize in fp32 (CPU has no half-precision antialiased bicubic), then the scorer's dtype
        pixels = clip_preprocess(images.to(param.device, torch.float32), self.mps.image_size).to(param.dtype)
        ids = self._ids(prompts).to(param.device)
        condition = self._ids([self.condition]).to(param.device).expand(len(prompts), -1)
        return self.mps(pixels, ids, condition, self.threshold)


def _layout(model_or_config: MPSModel | tuple[CLIPConfig, CrossConfig]) -> dict[str, torch.Size]:
    """Expected key -> shape of a model (a config pair is built on the meta device: instant, no memory)."""
    if isinstance(model_or_config, tuple):
        with torch.device("meta"):
            model_or_config = MPSModel(*model_or_config)
    return {k: v.shape for k, v in model_or_config.state_dict().items()}


def expected_tensor_names() -> set[str]:
    """The tensor names a converted MPS state dict must hold (stale buffers may be there or not)."""
    return {k for k in _layout((clip_vit_h14_config(), CrossConfig())) if not k.endswith(STALE_KEYS)}


def check_state_dict(state: dict[str, torch.Tensor], layout: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """``state`` without stale buffers, or a ValueError naming missing, unexpected and misshapen keys."""
    state = {k: v for k, v in state.items() if not k.endswith(STALE_KEYS)}
    missing, unexpected = sorted(set(layout) - set(state)), sorted(set(state) - set(layout))
    misshapen = sorted(k for k in set(layout) & set(state) if state[k].shape != layout[k])
    if missing or unexpected or misshapen:
        raise ValueError(
            f"not an MPS state dict for this architecture: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(misshapen)} of the wrong shape "
            f"(e.g. {[(k, tuple(state[k].shape), tuple(layout[k])) for k in misshapen[:3]]}). Expected the "
            "converted 'overall' checkpoint (python -m tlcm_train.preference.mps_convert convert).")
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor dict from .safetensors, or from .pth/.pt/.bin with ``torch.load(weights_only=True)`` (a
    pickled whole model is refused there: convert it first)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is not a plain state dict (it pickles objects, e.g. the released whole MPS "
                         "model): convert it once with `python -m tlcm_train.preference.mps_convert convert "
                         f"{path} <out>.safetensors`") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a dict of tensors")
    return state


def load_mps_state_dict(model: MPSModel, state: dict[str, torch.Tensor]) -> None:
    """Strict load with a clear error (stale ``position_ids`` buffers are dropped first)."""
    model.load_state_dict(check_state_dict(state, _layout(model)), strict=True)


def mps_tokenizer(folder: str | Path | None = None):
    """CLIP-ViT-H-14's tokenizer: a local HF tokenizer folder, or else the CLIP BPE built offline from
    open-clip-torch's vocabulary (same ids; padding with ``<|endoftext|>`` as laion's HF tokenizer)."""
    from transformers import CLIPTokenizer
    if folder is not None:
        return CLIPTokenizer.from_pretrained(folder)
    from tlcm.models.clip_tokenizer import write_clip_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))


def load_mps_scorer(path: str | Path, dtype: torch.dtype = torch.float32,
                    tokenizer: str | Path | None = None) -> MPSScorer:
    """The ViT-H-14 MPS scorer from a converted state dict (built in CPU memory without random init,
    keys checked before the ~1 B parameters are allocated)."""
    state = check_state_dict(read_state_dict(path), _layout((clip_vit_h14_config(), CrossConfig())))
    with no_init_weights():
        model = MPSModel(clip_vit_h14_config())
    model.load_state_dict(state, strict=True)
    return MPSScorer(model.to(dtype), mps_tokenizer(tokenizer))
