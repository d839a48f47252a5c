"""Test-only ComfyUI custom node: teach ComfyUI's model detection the tiny SDXL kit (never shipped).

ComfyUI accepts only full-size SDXL checkpoints. This registers a config for the kit's narrow SDXL
architecture (same classes: ``model_base.SDXL``, the SDXL CLIP-L + bigG pair, sizes from
``tlcm/testing/tiny.py``) at the front of ``comfy.supported_models.models``, so a kit checkpoint loads
through CheckpointLoaderSimple like a real one: EPS model sampling, SDXL adm, real CLIP tokenizers.

FLUX's text encoders (CLIP-L and T5-XXL, through DualCLIPLoader with type ``flux``) are built by ComfyUI
from fixed full-size configs; here every FLUX text-encoder pair gets the narrow widths of
``TINY_FLUX_CLIP_L`` / ``TINY_FLUX_T5`` (ComfyUI's own classes and tokenizers), the widths the tiny FLUX
transformer of the tests reads (pooled 16, context 32).
"""
import sys
from pathlib import Path

import comfy.supported_models as supported_models
import comfy.text_encoders.flux as flux_text_encoders
import torch
from comfy import sd1_clip, sdxl_clip, supported_models_base

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.append(_REPO)

from tlcm.testing import tiny  # noqa: E402

NODE_CLASS_MAPPINGS: dict = {}


_LAYERS = 2   # tiny.py's text encoders
_PENULTIMATE = _LAYERS - 2   # SDXL reads the penultimate layer; ComfyUI only accepts -2 with > 2 layers


def _clip_config(width: int) -> dict:
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": _LAYERS,
            "num_attention_heads": 2, "projection_dim": tiny.TEXT_WIDTH_2}


class TinySDXLClipModel(sdxl_clip.SDXLClipModel):
    """ComfyUI's SDXL CLIP pair with the kit's widths (ComfyUI reads ``<name>_model_config`` overrides)."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        torch.nn.Module.__init__(self)
        options = {**model_options, "clip_l_model_config": _clip_config(tiny.TEXT_WIDTH_1),
                   "clip_g_model_config": _clip_config(tiny.TEXT_WIDTH_2)}
        self.clip_l = sd1_clip.SDClipModel(layer="hidden", layer_idx=_PENULTIMATE, device=device, dtype=dtype,
                                           layer_norm_hidden_state=False, model_options=options)
        self.clip_g = sdxl_clip.SDXLClipG(device=device, dtype=dtype, layer="hidden", layer_idx=_PENULTIMATE,
                                          model_options=options)
        self.dtypes = {dtype}


class TinySDXL(supported_models.SDXL):
    unet_config = {"model_channels": tiny.UNET_CONFIG["block_out_channels"][0],
                   "context_dim": tiny.CROSS_ATTENTION_DIM,
                   "adm_in_channels": tiny.UNET_CONFIG["projection_class_embeddings_input_dim"],
                   "use_linear_in_transformer": True}
    # diffusers' SDXL config calls the head *count* attention_head_dim; the kit uses one count everywhere.
    unet_extra_config = {"num_heads": max(tiny.UNET_CONFIG["attention_head_dim"]), "num_head_channels": -1}

    def clip_target(self, state_dict={}):
        return supported_models_base.ClipTarget(sdxl_clip.SDXLTokenizer, TinySDXLClipModel)


if not any(m.__name__ == TinySDXL.__name__ for m in supported_models.models):
    supported_models.models.insert(0, TinySDXL)


TINY_FLUX_CLIP_L = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "projection_dim": 16}
TINY_FLUX_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1}


def _tiny_flux_clip(full_size_flux_clip):
    def flux_clip(**kwargs):
        full_size = full_size_flux_clip(**kwargs)

        class TinyFluxClipModel(full_size):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                options = {**model_options, "clip_l_model_config": TINY_FLUX_CLIP_L, "t5xxl_model_config": TINY_FLUX_T5}
                super().__init__(device=device, dtype=dtype, model_options=options)
        return TinyFluxClipModel
    flux_clip.tiny = True
    return flux_clip


if not getattr(flux_text_encoders.flux_clip, "tiny", False):
    flux_text_encoders.flux_clip = _tiny_flux_clip(flux_text_encoders.flux_clip)
