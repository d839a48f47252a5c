"""The node pack inside real ComfyUI 0.30 (in-process): registration, schedules, sampling parity, LoRA.

The tiny kit is loaded by ComfyUI's own CheckpointLoaderSimple. Schedules and sampled latents are compared
with the written-out references of ``tests/reference_tlcm.py`` (README timestep tables, the official VP loop
on the kit's diffusers UNet), never with ``tlcm.schedules``/``tlcm.sampling``, which the pack wraps.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from comfy_harness import (CHECKPOINT, CONTROLNET, INPUT_IMAGE, LORAS, comfy_base, comfy_nodes,  # noqa: F401
                           pack_module)
from reference_tlcm import (PARTIAL_DENOISE, README_TABLE, forward_diffuse, full_schedule, partial_denoise,
                            reference_loop, seeded_normal, sigmas_for)
from tlcm.lora import load_lora, merge_lora, tlcm_target_modules

PROMPT = "a lighthouse on a cliff at dawn"
SIZE = 64   # pixels; latent 8x8
TLCM_LORAS = [name for name in LORAS if "tiny_tlcm" in name]


@pytest.fixture(scope="module")
def loaded(comfy_nodes):
    """(model patcher, clip, vae) of the tiny checkpoint through CheckpointLoaderSimple."""
    return comfy_nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINT)[:3]


@pytest.fixture(scope="module")
def conditioning(loaded):
    """ComfyUI SDXL conditioning of PROMPT with explicit sizes (what CLIPTextEncodeSDXL writes)."""
    clip = loaded[1]
    cond, pooled = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
    sizes = dict(width=SIZE, height=SIZE, crop_w=0, crop_h=0, target_width=SIZE, target_height=SIZE)
    return [[cond, {"pooled_output": pooled, **sizes}]]


def _empty_latent(comfy_nodes) -> dict:
    return comfy_nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]


def _ksampler(comfy_nodes, model, cond, seed, steps, latent, denoise=1.0, sampler="tlcm", scheduler="tlcm"):
    return comfy_nodes.KSampler().sample(model, seed, steps, 1.0, sampler, scheduler, cond, cond, latent,
                                         denoise=denoise)[0]["samples"]


def _kit_eps(unet, cond):
    """ε̂(z, t) of the kit's diffusers UNet in VP space, with ComfyUI's conditioning (SDXL EPS model)."""
    embeds, meta = cond[0][0], cond[0][1]
    time_ids = torch.tensor([[meta["height"], meta["width"], meta["crop_h"], meta["crop_w"],
                              meta["target_height"], meta["target_width"]]], dtype=torch.float32)

    def eps(z, t):
        return unet(z, t, encoder_hidden_states=embeds,
                    added_cond_kwargs={"text_embeds": meta["pooled_output"], "time_ids": time_ids}).sample
    return eps


def _reference_latent(unet, cond, seed, timesteps, shape, eta=1.0, init=None):
    """The reference loop on ComfyUI's noise convention, written out: the start noise ξ is
    ``randn(shape)`` of ``Generator(seed)`` (``prepare_noise``); the sampler's fresh noise comes from
    ``Generator(seed + 1)`` (k-diffusion's seeded noise sampler on CPU). Full denoise starts from VP noise
    z = ξ at ``timesteps[0]``; with ``init`` (a model-space latent) from its forward diffusion to it."""
    xi = seeded_normal(seed, shape)()
    z = xi if init is None else forward_diffuse(init, xi, timesteps[0])
    with torch.no_grad():
        return reference_loop(_kit_eps(unet, cond), z, timesteps, eta=eta, noise=seeded_normal(seed + 1, shape))


# --------------------------------------------------------------------------- registration and schema

def test_sampler_and_scheduler_registered_in_place_once(comfy_nodes):
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.samplers as samplers
    registration = pack_module("registration")
    registration.register_sampler_and_scheduler()          # a second registration must not duplicate
    assert samplers.KSampler.SAMPLERS is samplers.SAMPLER_NAMES
    for names in (samplers.KSAMPLER_NAMES, samplers.SAMPLER_NAMES, samplers.SCHEDULER_NAMES):
        assert names.count("tlcm") == 1
    assert k_sampling.sample_tlcm is pack_module("sampling").sample_tlcm
    ksampler_inputs = comfy_nodes.KSampler.INPUT_TYPES()["required"]
    assert "tlcm" in ksampler_inputs["sampler_name"][0] and "tlcm" in ksampler_inputs["scheduler"][0]


def test_nodes_are_v3_with_tlcm_ids(comfy_nodes):
    from comfy_api.latest import io
    for node_id in ("TLCMSampler", "TLCMScheduler", "TLCMLoraLoader", "TLCMLoraSave"):
        cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
        assert issubclass(cls, io.ComfyNode)
        schema = cls.define_schema()
        assert schema.node_id == node_id and "tlcm" in schema.category
    steps = next(i for i in comfy_nodes.NODE_CLASS_MAPPINGS["TLCMScheduler"].define_schema().inputs if i.id == "steps")
    assert (steps.min, steps.max) == (1, 8)


# --------------------------------------------------------------------------- schedules

FRACTIONAL = sorted(key for key in PARTIAL_DENOISE if key[1] not in (0.5, 0.3))   # int(steps/d) != round


@pytest.mark.parametrize("schedule", ["tlcm", "uniform"])
@pytest.mark.parametrize("denoise", [1.0, 0.5, 0.3])
def test_scheduler_node_sigmas_equal_reference(comfy_nodes, loaded, schedule, denoise):
    node = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMScheduler"]
    for steps in range(1, 9):
        sigmas = node.execute(loaded[0], steps, denoise, schedule).result[0]
        expected = sigmas_for(partial_denoise(steps, denoise, schedule))
        assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
        torch.testing.assert_close(sigmas, expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("steps,denoise,schedule", FRACTIONAL)
def test_scheduler_node_fractional_denoise_keeps_the_int_schedule_tail(comfy_nodes, loaded, steps, denoise, schedule):
    """Ratios whose int and round differ (hand-derived tables): the node must truncate like KSampler."""
    ms = loaded[0].get_model_object("model_sampling")
    sigmas = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMScheduler"].execute(loaded[0], steps, denoise, schedule).result[0]
    assert [round(float(ms.timestep(s))) for s in sigmas[:-1]] == PARTIAL_DENOISE[steps, denoise, schedule]
    torch.testing.assert_close(sigmas, sigmas_for(PARTIAL_DENOISE[steps, denoise, schedule]), rtol=2e-6, atol=0)


def test_ksampler_scheduler_covers_denoise_and_long_schedules(loaded):
    import comfy.samplers
    model = loaded[0]
    ms = model.get_model_object("model_sampling")
    for n in range(1, 17):   # KSampler asks for int(steps/denoise) steps: up to 16 at denoise 0.5
        expected = sigmas_for(full_schedule(n))
        torch.testing.assert_close(comfy.samplers.calculate_sigmas(ms, "tlcm", n), expected, rtol=2e-6, atol=0)
    for denoise in (0.5, 0.45, 0.7):   # 4/0.45 = 8.89 -> 8-step tail; 4/0.7 = 5.71 -> 5-step tail
        sampler = comfy.samplers.KSampler(model, steps=4, device="cpu", sampler="tlcm", scheduler="tlcm",
                                          denoise=denoise)
        expected = PARTIAL_DENOISE[4, denoise, "tlcm"]
        assert [round(float(ms.timestep(s))) for s in sampler.sigmas[:-1]] == expected
        torch.testing.assert_close(sampler.sigmas, sigmas_for(expected), rtol=2e-6, atol=0)
    assert PARTIAL_DENOISE[4, 0.5, "tlcm"] == [499, 374, 249, 124]


# --------------------------------------------------------------------------- conditioning and parity

def test_comfy_clip_conditioning_equals_kit_encoders(loaded, conditioning, tiny_pipe):
    """ComfyUI's SDXL CLIP wiring (penultimate layers, pads, projected pooled) reproduces the kit's encoders.

    ComfyUI keeps text encoders in fp16 by default (CPU too), hence the ~1e-3 tolerance; a wrong layer
    or pad token differs by ~0.3.
    """
    with torch.no_grad():
        embeds, _, pooled, _ = tiny_pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    torch.testing.assert_close(conditioning[0][0], embeds, rtol=1e-2, atol=3e-3)
    torch.testing.assert_close(conditioning[0][1]["pooled_output"], pooled, rtol=1e-2, atol=3e-3)


@pytest.mark.parametrize("steps", [2, 4])
def test_ksampler_tlcm_latent_equals_reference_loop(comfy_nodes, loaded, conditioning, tiny_pipe, steps):
    """KSampler(tlcm, tlcm) == the official VP loop (eta 1, fresh noise from the seeded source)."""
    model = loaded[0]
    latent = _empty_latent(comfy_nodes)
    comfy_out = _ksampler(comfy_nodes, model, conditioning, 42, steps, latent)
    reference = _reference_latent(tiny_pipe.unet, conditioning, 42, README_TABLE[steps], latent["samples"].shape)
    scaled = model.model.process_latent_in(comfy_out)   # KSampler returns latents / 0.13025
    torch.testing.assert_close(scaled, reference, rtol=1e-4, atol=1e-4)
    other_seed = model.model.process_latent_in(_ksampler(comfy_nodes, model, conditioning, 43, steps, latent))
    if steps > 1:   # fresh noise after step 1: another seed must change the result
        assert (other_seed - reference).abs().max() > 1e-2


def test_ksampler_tlcm_on_a_v_prediction_zero_snr_model_equals_the_v_loop(comfy_nodes, loaded, conditioning,
                                                                          tiny_pipe):
    """ComfyUI's ModelSamplingDiscrete(v_prediction, zsnr) on the kit (how ComfyUI runs NoobAI-XL v-pred):
    KSampler tlcm equals the official loop for a v-prediction model, written out on diffusers' zero-SNR ᾱ
    (exactly 0 at t = 999, where x̂0 = −v): x̂0 = √ᾱ·z − √(1 − ᾱ)·v, re-noised with fresh noise. ComfyUI keeps
    ᾱ_999 = 4.9e-8 instead of 0, a difference of √4.9e-8·z ≈ 2e-4·z in the first x̂0."""
    from diffusers import DDPMScheduler
    from reference_tlcm import seeded_normal
    model = comfy_nodes.NODE_CLASS_MAPPINGS["ModelSamplingDiscrete"]().patch(loaded[0], "v_prediction", True)[0]
    latent = _empty_latent(comfy_nodes)
    out = model.model.process_latent_in(_ksampler(comfy_nodes, model, conditioning, 42, 4, latent))
    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           rescale_betas_zero_snr=True).alphas_cumprod.double()
    assert float(alphas[999]) == 0.0
    v_of = _kit_eps(tiny_pipe.unet, conditioning)                       # the kit's UNet output, read as v
    shape = latent["samples"].shape
    z, fresh = seeded_normal(42, shape)(), seeded_normal(43, shape)
    timesteps = README_TABLE[4]
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            a = float(alphas[t])
            x0 = math.sqrt(a) * z - math.sqrt(1 - a) * v_of(z, torch.tensor([t]))
            if i + 1 == len(timesteps):
                break
            a_next = float(alphas[timesteps[i + 1]])
            z = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * fresh()
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-3)
    eps_out = model.model.process_latent_in(_ksampler(comfy_nodes, loaded[0], conditioning, 42, 4, latent))
    assert (eps_out - x0).abs().max() > 0.1                              # the ε reading of the same UNet differs


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_custom_sampler_nodes_equal_reference_loop(comfy_nodes, loaded, conditioning, tiny_pipe, eta):
    """SamplerCustomAdvanced with TLCM Sampler + TLCM Scheduler (the custom-sampling route): eta 1 is the
    official loop on the shared noise source, eta 0 the deterministic DDIM jump. (At eta 1 this and the
    KSampler test pin both routes to the same reference, so they agree with each other too.)"""
    from comfy_extras.nodes_custom_sampler import BasicGuider, RandomNoise, SamplerCustomAdvanced
    m = comfy_nodes.NODE_CLASS_MAPPINGS
    model = loaded[0]
    sampler = m["TLCMSampler"].execute(eta).result[0]
    sigmas = m["TLCMScheduler"].execute(model, 4, 1.0, "tlcm").result[0]
    guider = BasicGuider.execute(model, conditioning).result[0]
    noise = RandomNoise.execute(7).result[0]
    latent = _empty_latent(comfy_nodes)
    out = model.model.process_latent_in(SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent)
                                        .result[1]["samples"])
    shape = latent["samples"].shape
    reference = _reference_latent(tiny_pipe.unet, conditioning, 7, [999, 749, 499, 124], shape, eta=eta)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    other = _reference_latent(tiny_pipe.unet, conditioning, 7, [999, 749, 499, 124], shape, eta=1.0 - eta)
    assert (other - reference).abs().max() > 1e-2      # eta 1 and eta 0 really are different samplers


class _FlowModel:
    """What ComfyUI hands a k-diffusion sampler, for a FLUX-type model: a callable returning x̂0 (a fixed
    affine map of x, so the result depends on every step) whose ``inner_model.model_patcher`` answers
    ``model_sampling`` with ComfyUI's own FLUX sampling class (``ModelSamplingFlux`` + ``CONST``)."""

    def __init__(self, shift: float):
        import comfy.model_sampling
        from types import SimpleNamespace

        class FluxSampling(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
            pass
        self.model_sampling = FluxSampling()
        self.model_sampling.set_parameters(shift=shift)
        patcher = SimpleNamespace(get_model_object=lambda name: {"model_sampling": self.model_sampling}[name])
        self.inner_model = SimpleNamespace(model_patcher=patcher)

    def __call__(self, x, sigma, **extra):
        return 0.6 * x + 0.1 * sigma.view(-1, 1, 1, 1)


def test_flux_sigmas_and_sampler_follow_the_official_flux_loop(comfy_nodes):
    """FLUX in ComfyUI: sigmas = FLUX's shift of linspace(1, 1/n, n) (then 0), and each step
    x ← (1 − σ')·x̂0 + σ'·ξ with ComfyUI's seeded noise, the last x̂0 the result (official scheduler, written out)."""
    import math
    from comfy.k_diffusion.sampling import default_noise_sampler
    sampling = pack_module("sampling")
    model, mu = _FlowModel(shift=1.15), 1.15
    sigmas = sampling.tlcm_sigmas(model.model_sampling, 4)
    times = [1.0, 0.75, 0.5, 0.25]                                  # FluxPipeline: linspace(1, 1/n, n)
    expected = [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in times] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected, abs=1e-6)
    half = sampling.tlcm_sigmas(model.model_sampling, 2, denoise=0.5)  # the last 2 of the 4-step list
    assert half.tolist() == pytest.approx(expected[2:], abs=1e-6)

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    got = sampling.sample_tlcm(model, x.clone(), sigmas, extra_args={"seed": 5}, disable=True)
    noise, ref = default_noise_sampler(x, seed=5), x.clone()
    for i in range(4):
        denoised = model(ref, sigmas[i] * torch.ones(1))
        nxt = float(sigmas[i + 1])
        ref = (1 - nxt) * denoised + nxt * noise(sigmas[i], sigmas[i + 1]) if nxt > 0 else denoised
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="flow model .* eta 1"):
        sampling.sample_tlcm(model, x.clone(), sigmas, extra_args={"seed": 5}, disable=True, eta=0.5)
    with pytest.raises(ValueError, match="one TLCM schedule"):
        sampling.tlcm_sigmas(model.model_sampling, 4, schedule="uniform")


def test_ksampler_fractional_denoise_equals_reference_loop(comfy_nodes, loaded, conditioning, tiny_pipe):
    """img2img at denoise 0.7: KSampler runs the tail of the int(4/0.7) = 5-step schedule (749, 499, 249,
    124; round would give 6 steps: 499, ...), starting from the forward diffusion of the input latent."""
    model = loaded[0]
    samples = 3.0 * torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(9))
    out = model.model.process_latent_in(_ksampler(comfy_nodes, model, conditioning, 21, 4, {"samples": samples},
                                                  denoise=0.7))
    timesteps = PARTIAL_DENOISE[4, 0.7, "tlcm"]
    assert timesteps == [749, 499, 249, 124]
    init = model.model.process_latent_in(samples)     # the model-space latent (x 0.13025)
    reference = _reference_latent(tiny_pipe.unet, conditioning, 21, timesteps, samples.shape, init=init)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_progress_callback_each_step_and_cancel(comfy_nodes, loaded, conditioning):
    """ComfyUI's sampling callback (progress bar, previews, Cancel check) runs at every step; the
    interrupt it raises on Cancel stops the sampler after that step."""
    import comfy.model_management as mm
    import comfy.sample
    latent = _empty_latent(comfy_nodes)["samples"]
    noise = comfy.sample.prepare_noise(latent, 3)
    steps_seen: list[tuple[int, int]] = []
    cancel_at: list[int] = []

    def callback(step, x0, x, total_steps):
        steps_seen.append((step, total_steps))
        assert torch.isfinite(x0).all()   # the preview latent
        if step in cancel_at:
            mm.interrupt_current_processing(True)   # what the Cancel button does
        mm.throw_exception_if_processing_interrupted()

    def run():
        return comfy.sample.sample(loaded[0], noise, 4, 1.0, "tlcm", "tlcm", conditioning, conditioning, latent,
                                   callback=callback, disable_pbar=True, seed=3)
    try:
        run()
        assert steps_seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
        steps_seen.clear()
        cancel_at.append(1)
        with pytest.raises(mm.InterruptProcessingException):
            run()
        assert steps_seen == [(0, 4), (1, 4)]
    finally:
        mm.interrupt_current_processing(False)


def test_tiny_controlnet_steers_tlcm_sampling(comfy_nodes, loaded, conditioning):
    """The kit ControlNet (made from the tiny UNet) loads in ComfyUI and changes the TLCM result."""
    control_net = comfy_nodes.ControlNetLoader().load_controlnet(CONTROLNET)[0]
    image = comfy_nodes.LoadImage().load_image(INPUT_IMAGE)[0]
    positive, _ = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        conditioning, conditioning, control_net, image, 0.8, 0.0, 1.0)
    latent = _empty_latent(comfy_nodes)
    controlled = _ksampler(comfy_nodes, loaded[0], positive, 5, 4, latent)
    plain = _ksampler(comfy_nodes, loaded[0], conditioning, 5, 4, latent)
    assert torch.isfinite(controlled).all() and (controlled - plain).abs().max() > 1e-3


# --------------------------------------------------------------------------- LoRA

def _patched_unet_weights(model) -> dict[str, torch.Tensor]:
    """UNet weights with the patcher's LoRA patches applied by ComfyUI's own ``calculate_weight``."""
    import comfy.lora
    weights = model.model_state_dict()
    return {key: comfy.lora.calculate_weight(model.patches[key], weights[key].float().clone(), key)
            if key in model.patches else weights[key]
            for key in weights if key.startswith("diffusion_model.")}


@pytest.mark.parametrize("lora_name", TLCM_LORAS)
def test_lora_loader_patches_every_target_like_core_merge(comfy_nodes, comfy_base, loaded, tiny_pipe, lora_name):
    import comfy.utils
    model = loaded[0]
    strength = 0.7
    out = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraLoader"].execute(model, lora_name, strength).result
    targets = tlcm_target_modules(tiny_pipe.unet)
    assert f"{len(targets)}/{len(targets)} modules patched" in out[2]
    assert f"TLCM targets covered {len(targets)}/{len(targets)}" in out[2]
    merged = copy.deepcopy(tiny_pipe.unet)
    merge_lora(merged, load_lora(comfy_base / "models" / "loras" / lora_name), strength)
    to_sgm = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    patched = _patched_unet_weights(out[0])
    original = tiny_pipe.unet.state_dict()
    changed = 0
    for key, value in merged.state_dict().items():
        got = patched[f"diffusion_model.{to_sgm[key]}"].reshape(value.shape)
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(value, original[key])
    assert changed == len(targets)


def test_ksampler_with_tlcm_lora_equals_reference_on_merged_unet(comfy_nodes, comfy_base, loaded, conditioning,
                                                                  tiny_pipe):
    """End to end: LoRA loader + KSampler(tlcm) == the reference loop on the UNet merged by the core."""
    official = TLCM_LORAS[0]
    model = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraLoader"].execute(loaded[0], official, 1.0).result[0]
    latent = _empty_latent(comfy_nodes)
    comfy_out = model.model.process_latent_in(_ksampler(comfy_nodes, model, conditioning, 11, 4, latent))
    merged = copy.deepcopy(tiny_pipe.unet)
    merge_lora(merged, load_lora(comfy_base / "models" / "loras" / official), 1.0)
    shape = latent["samples"].shape
    reference = _reference_latent(merged, conditioning, 11, README_TABLE[4], shape)
    base = _reference_latent(tiny_pipe.unet, conditioning, 11, README_TABLE[4], shape)
    torch.testing.assert_close(comfy_out, reference, rtol=1e-4, atol=1e-4)
    assert (reference - base).abs().max() > 1e-2   # the LoRA matters


def test_official_scale_and_stock_loader_gap(comfy_nodes, loaded):
    """The official layout gets the official scale alpha/rank = 8/4 here; stock LoraLoader patches nothing."""
    official = TLCM_LORAS[0]
    report = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraLoader"].execute(loaded[0], official, 1.0).result[2]
    assert "scale alpha/rank 2" in report
    stock_model, _ = comfy_nodes.LoraLoader().load_lora(loaded[0], loaded[1], official, 1.0, 1.0)
    assert not stock_model.patches


def test_saved_kohya_copy_loads_identically_in_stock_loader(comfy_nodes, comfy_base, loaded):
    import folder_paths
    official = TLCM_LORAS[0]
    path = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraSave"].execute(official, "loras/tlcm_test_copy").result[0]
    copied = load_lora(path)
    assert copied.source_format == "kohya"
    assert len(copied.modules) == len(load_lora(comfy_base / "models" / "loras" / official).modules)
    target = comfy_base / "models" / "loras" / "saved_copy.safetensors"
    target.write_bytes(open(path, "rb").read())
    folder_paths.filename_list_cache.clear()
    ours = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraLoader"].execute(loaded[0], official, 0.5).result[0]
    stock = comfy_nodes.LoraLoader().load_lora(loaded[0], loaded[1], "saved_copy.safetensors", 0.5, 0.5)[0]
    a, b = _patched_unet_weights(ours), _patched_unet_weights(stock)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_text_encoder_keys_patch_the_connected_clip(comfy_nodes, comfy_base, loaded, tiny_pipe):
    import folder_paths
    from safetensors.torch import save_file
    from tlcm.lora import to_kohya_state_dict
    te_key = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    width = tiny_pipe.text_encoder.config.hidden_size
    state = {**to_kohya_state_dict(load_lora(comfy_base / "models" / "loras" / TLCM_LORAS[0])),
             f"{te_key}.lora_down.weight": torch.full((2, width), 0.1), f"{te_key}.lora_up.weight": torch.full((width, 2), 0.1),
             f"{te_key}.alpha": torch.tensor(2.0)}
    save_file(state, str(comfy_base / "models" / "loras" / "with_text_encoder.safetensors"))
    folder_paths.filename_list_cache.clear()
    model, clip, report = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraLoader"].execute(
        loaded[0], "with_text_encoder.safetensors", 1.0, clip=loaded[1]).result
    assert "text encoder: 1 weights patched from 3 keys" in report
    assert len(clip.patcher.patches) == 1 and not loaded[1].patcher.patches


def test_wrong_architecture_lora_is_a_clear_error(comfy_nodes, loaded):
    with pytest.raises(ValueError, match=r"0 of 2 LoRA modules .* match"):
        comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraLoader"].execute(loaded[0], "wrong_arch_sd15_kohya.safetensors", 1.0)


def test_lora_distilled_from_another_kind_of_model_is_warned_about(comfy_nodes, comfy_base, loaded, tiny_pipe,
                                                                    caplog):
    """A LoRA the trainer recorded as distilled from a v-prediction zero-SNR base, on the kit's ε model:
    the warning names both kinds, first in the report and in the console; the ε record gets none."""
    import folder_paths
    from tlcm.lora import BaseKind, save_lora
    from comfy_harness import tiny_tlcm_lora
    loras = comfy_base / "models" / "loras"
    for name, kind in (("from_vpred.safetensors", BaseKind("v_prediction", True)),
                       ("from_eps.safetensors", BaseKind("epsilon", False))):
        lora = tiny_tlcm_lora(tiny_pipe.unet)
        lora.base = kind
        save_lora(lora, loras / name, "kohya")
    folder_paths.filename_list_cache.clear()
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMLoraLoader"]
    with caplog.at_level("WARNING"):
        report = loader.execute(loaded[0], "from_vpred.safetensors", 1.0).result[-1]
    first = report.splitlines()[0]
    assert first.startswith("WARNING: from_vpred.safetensors was distilled from a v_prediction with zero terminal "
                            "SNR model, but this model is epsilon"), first
    assert sum("distilled from a v_prediction" in r.getMessage() for r in caplog.records) == 1
    assert "WARNING" not in loader.execute(loaded[0], "from_eps.safetensors", 1.0).result[-1]


# --------------------------------------------------------------------------- full-size SDXL layout

@pytest.fixture(scope="module")
def sdxl_meta(comfy_nodes):
    """(ComfyUI SDXL model patcher, diffusers SDXL UNet), both full size on the meta device (no memory)."""
    import comfy.model_detection
    import comfy.model_patcher
    from diffusers import UNet2DConditionModel
    from tlcm.lora.targets import SDXL_UNET_STRUCTURE
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_STRUCTURE)
    config = comfy.model_detection.model_config_from_unet_config(
        comfy.model_detection.unet_config_from_diffusers_unet(unet.state_dict()))
    assert type(config).__name__ == "SDXL"
    with torch.device("meta"):
        model = config.get_model({})
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu")), unet


def _stock_comfy_matches(model, state_dict) -> int:
    """Weights ComfyUI's own LoraLoader code would patch from ``state_dict``."""
    import comfy.lora
    import comfy.lora_convert
    return len(comfy.lora.load_lora(comfy.lora_convert.convert_lora(dict(state_dict)),
                                    comfy.lora.model_lora_keys_unet(model.model, {}), log_missing=False))


def test_full_size_sdxl_coverage_per_format(sdxl_meta, tmp_path):
    """Every TLCM target of a real-size SDXL UNet is patched from each format; stock ComfyUI misses the
    official PEFT layout entirely (Comfy-Org/ComfyUI #9753)."""
    from safetensors.torch import load_file, save_file
    from tlcm.lora import LoraFile, LoraModule, save_lora
    model, unet = sdxl_meta
    targets = tlcm_target_modules(unet)
    modules = {}
    for name in targets:   # rank 1 keeps the files small; the layout is what is under test
        weight = unet.get_submodule(name).weight
        kernel = tuple(weight.shape[2:])
        modules[name] = LoraModule(torch.zeros(1, weight.shape[1], *kernel),
                                   torch.zeros(weight.shape[0], 1, *((1, 1) if kernel else ())), 8.0)
    lora = LoraFile(modules, "peft")
    files = {"official": tmp_path / "official" / "adapter_model.safetensors",
             "diffusers": save_lora(lora, tmp_path / "diffusers.safetensors", "diffusers"),
             "kohya": save_lora(lora, tmp_path / "kohya.safetensors", "kohya")}
    files["official"].parent.mkdir()
    save_file({f"base_model.model.{n}.lora_{ab}.weight": t for n, m in modules.items()
               for ab, t in (("A", m.down), ("B", m.up))}, str(files["official"]))
    apply = pack_module("lora").apply_tlcm_lora
    stock = {}
    for fmt, path in files.items():
        report = apply(model, None, path, 1.0).report
        assert f"{len(targets)}/{len(targets)} modules patched" in report, (fmt, report)
        stock[fmt] = _stock_comfy_matches(model, load_file(str(path)))
    print(f"SDXL TLCM targets {len(targets)}; stock ComfyUI LoraLoader matches {stock}")
    assert stock["official"] == 0 and stock["diffusers"] < len(targets) and stock["kohya"] == len(targets)
