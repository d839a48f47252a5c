"""A tiny FLUX.1 for real ComfyUI, written into the test base directory under the folders ComfyUI reads:
the transformer in ComfyUI's (Black Forest Labs') layout for UNETLoader, CLIP-L and T5 files for
DualCLIPLoader (type ``flux``; the fixture node gives them narrow widths), a seeded TAEF1 for VAELoader, and
the official TLCM-FLUX LoRA layout (PEFT folder, r and lora_alpha in adapter_config.json).

The FLUX example workflow names the files users download; ``FLUX_KIT_FILES`` maps those names to these.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from comfy_harness import comfy_base, comfy_nodes  # noqa: F401 (fixtures)
from lora_exports import write_official_peft
from tlcm.lora import TLCM_FLUX_TARGET_SUFFIXES

HIDDEN = 128             # ComfyUI detects FLUX heads as hidden / 128: one head of 128
MLP = 4 * HIDDEN
POOLED, CONTEXT = 16, 32  # the fixture node's CLIP-L width and T5 width
FLUX_PARAMS = dict(in_channels=16, out_channels=16, vec_in_dim=POOLED, context_in_dim=CONTEXT, hidden_size=HIDDEN,
                   mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
                   patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
RANK, ALPHA = 4, 3.0     # alpha != rank: a loader that drops alpha is off by 4/3
CHECKPOINT = "tiny_flux.safetensors"
CLIP_L, T5 = "tiny_flux_clip_l.safetensors", "tiny_flux_t5.safetensors"
LORA = "tiny_tlcm_flux/adapter_model.safetensors"
FLUX_KIT_FILES = {"flux1-dev.safetensors": CHECKPOINT, "clip_l.safetensors": CLIP_L, "t5xxl_fp16.safetensors": T5,
                  "ae.safetensors": "taef1", "TLCMFlux/adapter_model.safetensors": LORA}


@dataclass(frozen=True)
class FluxKit:
    transformer_state: dict[str, torch.Tensor]              # ComfyUI (BFL) names, float32
    lora_factors: dict[str, tuple[torch.Tensor, torch.Tensor]]   # diffusers module -> (A, B)
    lora_folder: Path


def diffusers_flux_targets() -> dict[str, tuple[int, int]]:
    """TLCM-FLUX target modules of the diffusers FLUX transformer of the same size: name -> (out, in)."""
    from diffusers import FluxTransformer2DModel
    with torch.device("meta"):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                       attention_head_dim=HIDDEN, num_attention_heads=1, joint_attention_dim=CONTEXT,
                                       pooled_projection_dim=POOLED, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    return {name: tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and any(name == s or name.endswith("." + s) for s in TLCM_FLUX_TARGET_SUFFIXES)}


def seeded_state(module: torch.nn.Module, seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Every tensor of ``module`` seeded (comfy.ops leaves weights uninitialised): norm weights 1, other
    vectors 0, matrices N(0, 1/fan_in)·scale."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in module.state_dict().items():
        if tensor.ndim > 1:
            value = scale * torch.randn(tensor.shape, generator=g) / tensor[0].numel() ** 0.5
        elif "norm" in key and key.endswith("weight"):
            value = torch.ones(tensor.shape)
        else:
            value = torch.zeros(tensor.shape)
        state[key] = value.contiguous()
    return state


def write_flux_kit(models: Path) -> FluxKit:
    """Write the tiny FLUX files under ``models`` (needs ComfyUI in-process, the fixture node loaded)."""
    import comfy.ldm.flux.model
    import comfy.ops
    import comfy.taesd.taesd
    import comfy.text_encoders.flux
    from safetensors.torch import save_file
    net = comfy.ldm.flux.model.Flux(image_model="flux", dtype=torch.float32, device="cpu",
                                    operations=comfy.ops.disable_weight_init, **FLUX_PARAMS)
    g = torch.Generator().manual_seed(5)
    transformer = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(transformer, str(models / "diffusion_models" / CHECKPOINT))

    encoders = comfy.text_encoders.flux.flux_clip()()          # the fixture node's narrow CLIP-L + T5
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file(seeded_state(encoders.clip_l.transformer, 11), str(models / "text_encoders" / CLIP_L))
    save_file(seeded_state(encoders.t5xxl.transformer, 12), str(models / "text_encoders" / T5))

    tae = seeded_state(comfy.taesd.taesd.TAESD(latent_channels=16), 13)
    (models / "vae_approx").mkdir(parents=True, exist_ok=True)
    for part in ("encoder", "decoder"):
        prefix = f"taesd_{part}."
        save_file({k[len(prefix):]: v for k, v in tae.items() if k.startswith(prefix)},
                  str(models / "vae_approx" / f"taef1_{part}.safetensors"))

    g = torch.Generator().manual_seed(9)
    factors = {name: (torch.randn(RANK, shape[1], generator=g), torch.randn(shape[0], RANK, generator=g))
               for name, shape in diffusers_flux_targets().items()}
    folder = write_official_peft(models / "loras" / Path(LORA).parent, factors, RANK, ALPHA,
                                 TLCM_FLUX_TARGET_SUFFIXES)
    return FluxKit(transformer, factors, folder)


@pytest.fixture(scope="session")
def flux_kit(comfy_nodes, comfy_base) -> FluxKit:
    """The tiny FLUX files in the session's ComfyUI base directory (in-process and server both see them)."""
    import folder_paths
    kit = write_flux_kit(comfy_base / "models")
    folder_paths.filename_list_cache.clear()
    return kit
