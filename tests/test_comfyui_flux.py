"""FLUX inside real ComfyUI 0.30: a tiny FLUX checkpoint in ComfyUI's own layout, loaded by its UNETLoader,
and the official TLCM-FLUX LoRA layout applied by the pack's loader.

The expected weights are written out here from the two naming schemes (diffusers ``FluxTransformer2DModel``
for the LoRA, Black Forest Labs' for ComfyUI): which fused weight and which rows each LoRA module lands in,
with ComfyUI's scale/shift swap of the final modulation. No ComfyUI key map is used to build them.
"""
from __future__ import annotations

import pytest
import torch

from comfy_harness import comfy_base, comfy_nodes, pack_module  # noqa: F401
from lora_exports import write_official_peft
from tlcm.lora import TLCM_FLUX_TARGET_SUFFIXES

HIDDEN = 128             # ComfyUI detects FLUX heads as hidden / 128: one head of 128
MLP = 4 * HIDDEN
FLUX_PARAMS = dict(in_channels=16, out_channels=16, vec_in_dim=16, context_in_dim=32, hidden_size=HIDDEN,
                   mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
                   patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
RANK, ALPHA = 4, 3.0     # alpha != rank: a loader that drops alpha is off by 4/3
CHECKPOINT = "tiny_flux.safetensors"


def _rows(start: int, size: int) -> slice:
    return slice(start, start + size)


# diffusers module -> (ComfyUI weight, rows of it); every TLCM-FLUX target of a 1 + 1 block model
WHERE = {
    "transformer_blocks.0.attn.to_q": ("double_blocks.0.img_attn.qkv", _rows(0, HIDDEN)),
    "transformer_blocks.0.attn.to_k": ("double_blocks.0.img_attn.qkv", _rows(HIDDEN, HIDDEN)),
    "transformer_blocks.0.attn.to_v": ("double_blocks.0.img_attn.qkv", _rows(2 * HIDDEN, HIDDEN)),
    "transformer_blocks.0.attn.add_q_proj": ("double_blocks.0.txt_attn.qkv", _rows(0, HIDDEN)),
    "transformer_blocks.0.attn.add_k_proj": ("double_blocks.0.txt_attn.qkv", _rows(HIDDEN, HIDDEN)),
    "transformer_blocks.0.attn.add_v_proj": ("double_blocks.0.txt_attn.qkv", _rows(2 * HIDDEN, HIDDEN)),
    "transformer_blocks.0.attn.to_out.0": ("double_blocks.0.img_attn.proj", slice(None)),
    "transformer_blocks.0.attn.to_add_out": ("double_blocks.0.txt_attn.proj", slice(None)),
    "transformer_blocks.0.norm1.linear": ("double_blocks.0.img_mod.lin", slice(None)),
    "transformer_blocks.0.norm1_context.linear": ("double_blocks.0.txt_mod.lin", slice(None)),
    "transformer_blocks.0.ff.net.0.proj": ("double_blocks.0.img_mlp.0", slice(None)),
    "transformer_blocks.0.ff.net.2": ("double_blocks.0.img_mlp.2", slice(None)),
    "transformer_blocks.0.ff_context.net.0.proj": ("double_blocks.0.txt_mlp.0", slice(None)),
    "transformer_blocks.0.ff_context.net.2": ("double_blocks.0.txt_mlp.2", slice(None)),
    "single_transformer_blocks.0.attn.to_q": ("single_blocks.0.linear1", _rows(0, HIDDEN)),
    "single_transformer_blocks.0.attn.to_k": ("single_blocks.0.linear1", _rows(HIDDEN, HIDDEN)),
    "single_transformer_blocks.0.attn.to_v": ("single_blocks.0.linear1", _rows(2 * HIDDEN, HIDDEN)),
    "single_transformer_blocks.0.proj_mlp": ("single_blocks.0.linear1", _rows(3 * HIDDEN, MLP)),
    "single_transformer_blocks.0.proj_out": ("single_blocks.0.linear2", slice(None)),
    "single_transformer_blocks.0.norm.linear": ("single_blocks.0.modulation.lin", slice(None)),
    "x_embedder": ("img_in", slice(None)),
    "context_embedder": ("txt_in", slice(None)),
    "time_text_embed.timestep_embedder.linear_1": ("time_in.in_layer", slice(None)),
    "time_text_embed.timestep_embedder.linear_2": ("time_in.out_layer", slice(None)),
    "time_text_embed.text_embedder.linear_1": ("vector_in.in_layer", slice(None)),
    "time_text_embed.text_embedder.linear_2": ("vector_in.out_layer", slice(None)),
    "time_text_embed.guidance_embedder.linear_1": ("guidance_in.in_layer", slice(None)),
    "time_text_embed.guidance_embedder.linear_2": ("guidance_in.out_layer", slice(None)),
    "proj_out": ("final_layer.linear", slice(None)),
    "norm_out.linear": ("final_layer.adaLN_modulation.1", slice(None)),     # (scale, shift) -> (shift, scale)
}


def diffusers_flux_targets() -> dict[str, tuple[int, int]]:
    """TLCM-FLUX target modules of the diffusers FLUX transformer of the same size: name -> (out, in)."""
    from diffusers import FluxTransformer2DModel
    with torch.device("meta"):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                       attention_head_dim=HIDDEN, num_attention_heads=1, joint_attention_dim=32,
                                       pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    return {name: tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and any(name == s or name.endswith("." + s) for s in TLCM_FLUX_TARGET_SUFFIXES)}


@pytest.fixture(scope="module")
def flux_model(comfy_nodes, comfy_base):
    """The tiny FLUX through ComfyUI's UNETLoader, from a file in ComfyUI's (BFL) layout."""
    import comfy.ldm.flux.model
    import comfy.ops
    import folder_paths
    from safetensors.torch import save_file
    net = comfy.ldm.flux.model.Flux(image_model="flux", dtype=torch.float32, device="cpu",
                                    operations=comfy.ops.disable_weight_init, **FLUX_PARAMS)
    g = torch.Generator().manual_seed(5)
    state = {k: 0.05 * torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    folder = comfy_base / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / CHECKPOINT))
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    folder_paths.filename_list_cache.clear()
    return comfy_nodes.UNETLoader().load_unet(CHECKPOINT, "default")[0]


@pytest.fixture(scope="module")
def official_flux_lora(comfy_base):
    """The official TLCM-FLUX layout: a PEFT folder, ``base_model.model.<diffusers path>.lora_A/B.weight``,
    adapter_config.json with r and lora_alpha; random non-zero factors on every target."""
    g = torch.Generator().manual_seed(9)
    modules = {name: (torch.randn(RANK, shape[1], generator=g), torch.randn(shape[0], RANK, generator=g))
               for name, shape in diffusers_flux_targets().items()}
    folder = write_official_peft(comfy_base / "models" / "loras" / "tiny_tlcm_flux", modules, RANK, ALPHA,
                                 TLCM_FLUX_TARGET_SUFFIXES)
    return folder, modules


def test_flux_targets_of_diffusers_are_all_placed():
    """The written-out table covers exactly the TLCM-FLUX targets diffusers has (none forgotten)."""
    assert set(diffusers_flux_targets()) == set(WHERE)


def test_official_flux_lora_patches_every_target_at_alpha_over_rank(flux_model, official_flux_lora):
    import comfy.lora
    folder, modules = official_flux_lora
    strength = 0.6
    applied = pack_module("lora").apply_tlcm_lora(flux_model, None, folder, strength)
    n = len(WHERE)
    assert f"{n}/{n} modules patched in the FLUX transformer" in applied.report
    assert f"TLCM targets covered {n}/{n}" in applied.report and "scale alpha/rank 0.75" in applied.report
    weights = flux_model.model_state_dict()
    expected = {key: w.float().clone() for key, w in weights.items() if key.startswith("diffusion_model.")}
    for name, (target, rows) in WHERE.items():
        a, b = modules[name]
        delta = strength * (ALPHA / RANK) * (b @ a)
        if name == "norm_out.linear":
            delta = torch.cat([delta[HIDDEN:], delta[:HIDDEN]])
        expected[f"diffusion_model.{target}.weight"][rows] += delta
    patched = applied.model.patches
    for key, want in expected.items():
        got = (comfy.lora.calculate_weight(patched[key], weights[key].float().clone(), key)
               if key in patched else weights[key].float())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=key)
    assert not flux_model.patches                                # the loader's input model is untouched


def test_flux_lora_of_another_size_is_a_clear_error(flux_model, comfy_base):
    from safetensors.torch import save_file
    path = comfy_base / "models" / "loras" / "flux_wrong_width.safetensors"
    save_file({"base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(RANK, 3072),
               "base_model.model.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(3072, RANK)}, str(path))
    errors = pack_module("lora").LoraMatchError
    with pytest.raises(errors, match="do not fit this model's weights"):
        pack_module("lora").apply_tlcm_lora(flux_model, None, path, 1.0)


def test_ksampler_tlcm_on_the_flux_checkpoint_equals_the_official_loop(comfy_nodes, flux_model):
    """KSampler("tlcm", "tlcm") on the real FLUX model: the official TLCM-FLUX loop written out on the
    model's own velocity prediction, with FLUX's shift (1.15) of linspace(1, 1/n, n), ComfyUI's start noise
    (Generator(seed)) and fresh noise (Generator(seed + 1)), and FLUX's latent scale/shift at both ends."""
    import math
    from reference_tlcm import seeded_normal
    steps, seed, shape = 4, 11, (1, 16, 8, 8)
    g = torch.Generator().manual_seed(3)
    context, pooled = torch.randn(1, 8, 32, generator=g), torch.randn(1, 16, generator=g)
    cond = [[context, {"pooled_output": pooled, "guidance": 3.5}]]
    out = comfy_nodes.KSampler().sample(flux_model, seed, steps, 1.0, "tlcm", "tlcm", cond, cond,
                                        {"samples": torch.zeros(shape)})[0]["samples"]

    assert flux_model.get_model_object("model_sampling").shift == 1.15
    sigmas = [math.exp(1.15) / (math.exp(1.15) + (1 / t - 1)) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    diffusion_model = flux_model.model.diffusion_model

    def x0(x, sigma):                      # FLUX predicts the velocity v; x̂0 = x − σ·v
        with torch.no_grad():
            v = diffusion_model(x, torch.tensor([sigma]), context=context, y=pooled, guidance=torch.tensor([3.5]))
        return x - sigma * v

    x, fresh = seeded_normal(seed, shape)(), seeded_normal(seed + 1, shape)
    for i in range(steps):
        denoised, nxt = x0(x, sigmas[i]), sigmas[i + 1]
        x = (1 - nxt) * denoised + nxt * fresh() if nxt > 0 else denoised
    expected = x / 0.3611 + 0.1159                                 # FLUX latent format, out of model space
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
