"""An open_clip CLIP checkpoint as a transformers ``CLIPModel``, for checkpoints published only in open_clip's
layout (``laion/CLIP-ViT-g-14-laion2B-s34B-b88K``: ``open_clip_config.json``, ``open_clip_model.safetensors``
and the tokenizer files, no transformers ``config.json``).

open_clip itself needs torchvision, which the diffusers stack here does not carry; the two layouts hold the
same tensors under other names. The mapping: ``visual.conv1`` / ``class_embedding`` / ``positional_embedding``
/ ``ln_pre`` / ``ln_post`` / ``proj`` become the vision embeddings, pre- and post-layer norms and the visual
projection (``proj`` transposed); each residual block's fused ``attn.in_proj_*`` splits into q, k, v in that
order, ``ln_1``/``ln_2`` become ``layer_norm1``/``2`` and ``mlp.c_fc``/``c_proj`` ``fc1``/``fc2``; the text
tower's ``token_embedding``, ``positional_embedding``, ``ln_final`` and ``text_projection`` (transposed) map
the same way. Sizes come from the tensors; head counts and the activation from ``open_clip_config.json``.
Only the plain CLIP ViT is accepted: a checkpoint with any tensor this mapping does not place (layer scale,
attention pooling, another text tower) is refused, never loaded in part.

The text pooling agrees: open_clip pools the text at the end-of-text token, the largest id (argmax of the
ids); transformers' ``CLIPTextModel`` does the same with its default ``eos_token_id`` of 2.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

CONFIG_FILE, WEIGHTS_FILE = "open_clip_config.json", "open_clip_model.safetensors"
OPEN_CLIP_DEFAULT_HEADS, OPEN_CLIP_DEFAULT_HEAD_WIDTH = 8, 64     # open_clip's CLIPTextCfg / CLIPVisionCfg
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def is_open_clip_folder(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and not (folder / "config.json").is_file()


def _layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({m.group(2) for key in state if (m := _BLOCK.match(key)) and (m.group(1) or "") == prefix})


def transformers_config(model_cfg: dict, state: dict[str, torch.Tensor]):
    """The ``CLIPConfig`` of these tensors; ``model_cfg`` is ``open_clip_config.json``'s ``model_cfg``."""
    from transformers import CLIPConfig
    vision_cfg, text_cfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    vision_width, text_width = state["visual.conv1.weight"].shape[0], state["token_embedding.weight"].shape[1]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision = dict(hidden_size=vision_width, patch_size=patch, image_size=grid * patch,
                  num_hidden_layers=_layers(state, "visual."), hidden_act=act,
                  intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  num_attention_heads=vision_width // vision_cfg.get("head_width", OPEN_CLIP_DEFAULT_HEAD_WIDTH))
    text = dict(hidden_size=text_width, vocab_size=state["token_embedding.weight"].shape[0],
                max_position_embeddings=state["positional_embedding"].shape[0], hidden_act=act,
                num_hidden_layers=_layers(state, ""),
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_attention_heads=text_cfg.get("heads", OPEN_CLIP_DEFAULT_HEADS))
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["text_projection"].shape[1])


def transformers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip tensor names → ``CLIPModel``'s; ``ValueError`` naming a tensor with no place."""
    out: dict[str, torch.Tensor] = {}
    fixed = {"visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", False),
             "visual.class_embedding": ("vision_model.embeddings.class_embedding", False),
             "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight", False),
             "visual.proj": ("visual_projection.weight", True),
             "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", False),
             "positional_embedding": ("text_model.embeddings.position_embedding.weight", False),
             "text_projection": ("text_projection.weight", True), "logit_scale": ("logit_scale", False)}
    norms = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm",
             "ln_final": "text_model.final_layer_norm"}
    for key, tensor in state.items():
        stem, _, leaf = key.rpartition(".")
        block = _BLOCK.match(key)
        layer = block and f"{'vision_model' if block.group(1) else 'text_model'}.encoder.layers.{block.group(2)}"
        if key in fixed:
            name, transpose = fixed[key]
            out[name] = tensor.t().contiguous() if transpose else tensor
        elif stem in norms:
            out[f"{norms[stem]}.{leaf}"] = tensor
        elif block and block.group(3).startswith("attn.in_proj_"):
            kind = block.group(3).removeprefix("attn.in_proj_")                  # weight or bias
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[f"{layer}.self_attn.{part}.{kind}"] = chunk.contiguous()
        elif block and block.group(3).rpartition(".")[0] in _BLOCK_PARTS:
            out[f"{layer}.{_BLOCK_PARTS[block.group(3).rpartition('.')[0]]}.{leaf}"] = tensor
        elif key != "attn_mask":                  # the text tower's causal mask, rebuilt by transformers
            raise ValueError(f"open_clip tensor {key!r} has no place in a plain CLIP ViT (layer scale, attention "
                             "pooling and other towers are not supported)")
    return out


def load_open_clip(folder: Path, dtype: torch.dtype):
    """``(CLIPModel, mean, std)`` from an open_clip folder; the mean/std are its preprocessing's."""
    from safetensors.torch import load_file
    from transformers import CLIPModel
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"open_clip weights not found: {weights} is missing (pickled "
                                "open_clip_pytorch_model.bin is not loaded)")
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    state = load_file(str(weights))
    model = CLIPModel(transformers_config(config.get("model_cfg", {}), state))
    missing, unexpected = model.load_state_dict(transformers_state_dict(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{weights}: does not fill a CLIPModel (missing {missing[:3]}, unexpected {unexpected[:3]})")
    pre = config.get("preprocess_cfg", {})
    return model.to(dtype), tuple(pre.get("mean", ())), tuple(pre.get("std", ()))
