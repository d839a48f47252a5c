"""FLUX inside real ComfyUI 0.30: a tiny FLUX checkpoint in ComfyUI's own layout, loaded by its UNETLoader,
and the official TLCM-FLUX LoRA layout applied by the pack's loader.

The expected weights are written out here from the two naming schemes (diffusers ``FluxTransformer2DModel``
for the LoRA, Black Forest Labs' for ComfyUI): which fused weight and which rows each LoRA module lands in,
with ComfyUI's scale/shift swap of the final modulation. No ComfyUI key map is used to build them.
"""
from __future__ import annotations

import pytest
import torch

from comfy_flux_kit import (ALPHA, CHECKPOINT, FLUX_KIT_FILES, FLUX_PARAMS, HIDDEN, MLP, RANK,  # noqa: F401
                            diffusers_flux_targets, flux_kit)
from comfy_harness import KIT_FILES, KIT_SIZE, REPO, comfy_base, comfy_nodes, comfy_server, on_tiny_kit, pack_module  # noqa: F401


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


def merged_by_hand(transformer: dict[str, torch.Tensor], factors: dict, strength: float) -> dict[str, torch.Tensor]:
    """The ComfyUI-named FLUX weights with every LoRA module added at strength · alpha/r into the rows WHERE
    names (float32 copies)."""
    merged = {key: w.float().clone() for key, w in transformer.items()}
    for name, (target, rows) in WHERE.items():
        a, b = factors[name]
        delta = strength * (ALPHA / RANK) * (b @ a)
        if name == "norm_out.linear":
            delta = torch.cat([delta[HIDDEN:], delta[:HIDDEN]])
        merged[f"{target}.weight"][rows] += delta
    return merged


@pytest.fixture(scope="module")
def flux_model(comfy_nodes, flux_kit):
    """The tiny FLUX through ComfyUI's UNETLoader, from its file in ComfyUI's (BFL) layout."""
    return comfy_nodes.UNETLoader().load_unet(CHECKPOINT, "default")[0]


@pytest.fixture(scope="module")
def official_flux_lora(flux_kit):
    """The official TLCM-FLUX layout: a PEFT folder, ``base_model.model.<diffusers path>.lora_A/B.weight``,
    adapter_config.json with r and lora_alpha; random non-zero factors on every target."""
    return flux_kit.lora_folder, flux_kit.lora_factors


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
    expected = {f"diffusion_model.{key}": w for key, w in merged_by_hand(
        {key.removeprefix("diffusion_model."): w for key, w in weights.items() if key.startswith("diffusion_model.")},
        modules, strength).items()}
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


def test_flux_example_workflow_equals_the_official_loop(comfy_server, comfy_base, comfy_nodes, flux_kit):
    """example_workflows/tlcm_flux.json, unchanged but for the file names and the 64 px size, in the headless
    server: it saves an image, and its sampled latent (SaveLatent in place of the decode) equals the official
    TLCM-FLUX loop written out here: the transformer with the LoRA merged by hand at alpha/r, the resolution
    shift of diffusers' FluxPipeline for 64 px (16 tokens), ComfyUI's seeded start and fresh noise, the
    workflow's own conditioning and guidance 7."""
    import json
    import math

    import comfy.ldm.flux.model
    import comfy.ops
    from PIL import Image
    from safetensors.torch import load_file

    from reference_tlcm import seeded_normal
    api = json.loads((REPO / "example_workflows" / "api" / "tlcm_flux.json").read_text(encoding="utf-8"))
    prompt = on_tiny_kit(api, {**KIT_FILES, **FLUX_KIT_FILES})
    ids = {node["class_type"]: key for key, node in prompt.items()}

    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    (image,) = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    with Image.open(comfy_base / "output" / image["subfolder"] / image["filename"]) as saved:
        assert saved.size == (KIT_SIZE, KIT_SIZE)
    report = next(out for key, out in entry["outputs"].items() if key == ids["PreviewAny"])
    assert f"{len(WHERE)}/{len(WHERE)} modules patched in the FLUX transformer" in json.dumps(report)

    for node in ("VAEDecode", "SaveImage", "PreviewAny"):
        del prompt[ids[node]]
    prompt["90"] = {"class_type": "SaveLatent", "inputs": {"samples": [ids["KSampler"], 0],
                                                           "filename_prefix": "tlcm/flux_latent"}}
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    (saved,) = entry["outputs"]["90"]["latents"]
    sampled = load_file(str(comfy_base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]

    sampler = prompt[ids["KSampler"]]["inputs"]
    seed, steps = sampler["seed"], sampler["steps"]
    (guidance,) = [prompt[ids["FluxGuidance"]]["inputs"]["guidance"]]
    clip = comfy_nodes.DualCLIPLoader().load_clip(**prompt[ids["DualCLIPLoader"]]["inputs"])[0]
    (context, extra), = comfy_nodes.CLIPTextEncode().encode(clip, prompt[ids["CLIPTextEncode"]]["inputs"]["text"])[0]
    net = comfy.ldm.flux.model.Flux(image_model="flux", dtype=torch.float32, device="cpu",
                                    operations=comfy.ops.disable_weight_init, **FLUX_PARAMS)
    net.load_state_dict(merged_by_hand(flux_kit.transformer_state, flux_kit.lora_factors, 1.0))

    tokens = (KIT_SIZE // 16) ** 2                                 # FluxPipeline's image_seq_len
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)        # its calculate_shift defaults
    sigmas = [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in (1 - i / steps for i in range(steps))] + [0.0]

    def x0(x, sigma):                      # FLUX predicts the velocity v; x̂0 = x − σ·v
        with torch.no_grad():
            v = net(x, torch.tensor([sigma]), context=context, y=extra["pooled_output"],
                    guidance=torch.tensor([guidance]))
        return x - sigma * v

    shape = (1, 16, KIT_SIZE // 8, KIT_SIZE // 8)
    x, fresh = seeded_normal(seed, shape)(), seeded_normal(seed + 1, shape)
    for i in range(steps):
        denoised, nxt = x0(x, sigmas[i]), sigmas[i + 1]
        x = (1 - nxt) * denoised + nxt * fresh() if nxt > 0 else denoised
    torch.testing.assert_close(sampled, x / 0.3611 + 0.1159, rtol=1e-4, atol=1e-4)   # FLUX latent format
