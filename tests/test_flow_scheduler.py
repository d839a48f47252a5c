"""FLUX TLCM: ``TLCMFlowMatchScheduler`` inside a tiny ``FluxPipeline`` and the k-diffusion flow step.

The reference is the official ``scheduling_flow_match_tlcm.py`` loop written out here (it imports nothing of
``tlcm``): sigmas = linspace(1, 1/n, n), shifted e^mu / (e^mu + 1/σ − 1) with mu linear in the image token
count (256 → 0.5, 4096 → 1.15), then 0; x̂0 = x − σ·v; next = σ_next·ξ + (1 − σ_next)·x̂0 with ξ drawn
in the packed latent's shape at every step; the last x̂0 is the result.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tlcm.flow_scheduler import TLCMFlowMatchScheduler  # noqa: E402
from tlcm.sampling import renoise_flow, sample_tlcm_flow  # noqa: E402

FLUX_DEV_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                          num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
GUIDANCE = 7.0       # the official README's FLUX call: guidance_scale=7
PROMPT = "a cat near the window"


def tokens(height: int, width: int) -> int:
    """Image tokens: 8x VAE downsampling, then 2x2 packing."""
    return (height // 16) * (width // 16)


def mu_by_hand(image_seq_len: int) -> float:
    slope = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + slope * (image_seq_len - 256)


def sigmas_by_hand(n: int, image_seq_len: int) -> list[float]:
    """linspace(1, 1/n, n), exponential time shift, then 0: the official table, in Python floats."""
    base = [1.0] if n == 1 else [1.0 + i * (1.0 / n - 1.0) / (n - 1) for i in range(n)]
    e = math.exp(mu_by_hand(image_seq_len))
    return [e / (e + 1.0 / s - 1.0) for s in base] + [0.0]


# -- sigma tables --------------------------------------------------------------------------------------------

def test_the_formula_by_hand_at_1024_four_steps():
    """Anchor digits: mu(4096) = 1.15, e^1.15 = 3.158193; σ = 0.75 → 3.158193 / (3.158193 + 1/3), …"""
    assert mu_by_hand(4096) == pytest.approx(1.15)
    assert sigmas_by_hand(4, 4096) == pytest.approx([1.0, 0.904531, 0.759511, 0.512844, 0.0], abs=1e-6)


@pytest.mark.parametrize("height,width", [(1024, 1024), (832, 1216)])
@pytest.mark.parametrize("steps", range(1, 9))
def test_sigma_table(height, width, steps):
    scheduler = TLCMFlowMatchScheduler.from_config(FLUX_DEV_SCHEDULER)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device="cpu",
                            mu=mu_by_hand(tokens(height, width)))    # as FluxPipeline calls it
    expected = torch.tensor(sigmas_by_hand(steps, tokens(height, width)), dtype=torch.float32)
    assert scheduler.sigmas.dtype == torch.float32
    assert torch.allclose(scheduler.sigmas, expected, rtol=0, atol=1e-6), (scheduler.sigmas, expected)
    assert torch.allclose(scheduler.timesteps, expected[:-1] * 1000, rtol=0, atol=1e-3)


def test_static_shift_and_no_sigmas():
    scheduler = TLCMFlowMatchScheduler(shift=3.0)
    scheduler.set_timesteps(2)
    # training grid ends shifted: σ_max = 1, σ_min = 3·0.001 / (1 + 2·0.001); the span is shifted again
    s_min = 3 * 0.001 / (1 + 2 * 0.001)
    again = [1.0, 3 * s_min / (1 + 2 * s_min), 0.0]
    assert scheduler.sigmas.tolist() == pytest.approx(again, abs=1e-7)
    with pytest.raises(ValueError, match="mu"):
        TLCMFlowMatchScheduler.from_config(FLUX_DEV_SCHEDULER).set_timesteps(4)
    with pytest.raises(ValueError):
        TLCMFlowMatchScheduler().set_timesteps(sigmas=[])


# -- the step -------------------------------------------------------------------------------------------------

def test_step_contract():
    scheduler = TLCMFlowMatchScheduler.from_config(FLUX_DEV_SCHEDULER)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.5, 2), mu=0.8)
    x = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    sigma, sigma_next = scheduler.sigmas[0], scheduler.sigmas[1]
    out = scheduler.step(v, scheduler.timesteps[0], x, generator=generator)
    x0 = x - sigma * v
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out.denoised, x0, atol=1e-6)
    assert torch.allclose(out.prev_sample, sigma_next * xi + (1 - sigma_next) * x0, atol=1e-6)
    prev, denoised = scheduler.step(v, scheduler.timesteps[1], out.prev_sample, generator=generator,
                                    return_dict=False)
    assert torch.equal(prev, denoised)                            # σ_next = 0: the last x̂0 itself
    mirror = torch.Generator().manual_seed(2)
    for _ in range(2):                                             # noise drawn at the last step too
        torch.randn(x.shape, generator=mirror)
    assert torch.equal(generator.get_state(), mirror.get_state())
    with pytest.raises(ValueError, match="step called"):
        scheduler.step(v, scheduler.timesteps[1], prev)
    with pytest.raises(ValueError, match="integer"):
        scheduler.step(v, 1, x)


def test_step_dtype_follows_the_model():
    scheduler = TLCMFlowMatchScheduler()
    scheduler.set_timesteps(sigmas=[1.0, 0.5])
    v = torch.randn(1, 4, 8).to(torch.bfloat16)
    out = scheduler.step(v, scheduler.timesteps[0], torch.randn(1, 4, 8).to(torch.bfloat16),
                         generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == out.denoised.dtype == torch.bfloat16


def test_config_round_trip(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler
    euler = FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV_SCHEDULER)
    scheduler = TLCMFlowMatchScheduler.from_config(euler.config)
    assert scheduler.config.use_dynamic_shifting and scheduler.config.max_shift == 1.15
    scheduler.save_config(tmp_path)
    assert dict(TLCMFlowMatchScheduler.from_pretrained(tmp_path).config) == dict(scheduler.config)


def test_scale_noise_at_the_begin_index():
    scheduler = TLCMFlowMatchScheduler.from_config(FLUX_DEV_SCHEDULER)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), mu=1.0)
    scheduler.set_begin_index(2)
    x0, noise = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    sigma = float(scheduler.sigmas[2])
    out = scheduler.scale_noise(x0, scheduler.timesteps[2:3].repeat(2), noise)
    assert torch.allclose(out, sigma * noise + (1 - sigma) * x0, atol=1e-6)


# -- the k-diffusion flow step --------------------------------------------------------------------------------

def test_sample_tlcm_flow_is_the_official_loop():
    """A host's denoiser returns x̂0 = x − σ·v; the loop is the official one, on an unpacked latent."""
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))

    def velocity(x, sigma):
        return torch.tanh(torch.einsum("ij,bjhw->bihw", weight, x)) * (1 + sigma.view(-1, 1, 1, 1))

    sigmas = torch.tensor(sigmas_by_hand(4, 4096), dtype=torch.float32)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    noise = torch.Generator().manual_seed(5)
    got = sample_tlcm_flow(lambda x, s: x - s.view(-1, 1, 1, 1) * velocity(x, s), start, sigmas, disable=True,
                           noise_sampler=lambda s, sn: torch.randn(start.shape, generator=noise))
    x, ref_noise = start, torch.Generator().manual_seed(5)
    for i in range(4):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = x - s * velocity(x, s.view(1))
        x = x0 if i == 3 else s_next * torch.randn(x.shape, generator=ref_noise) + (1 - s_next) * x0
    assert torch.allclose(got, x, atol=1e-6)
    assert renoise_flow(x, 0.0, None) is x
    with pytest.raises(ValueError, match="noise"):
        renoise_flow(x, 0.5, None)


# -- inside FluxPipeline --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flux_pipe(tmp_path_factory, one_thread):
    from tlcm.testing.tiny_flux import tiny_flux_pipeline
    pipe = tiny_flux_pipeline(tmp_path_factory.mktemp("tiny_flux"), seed=0)
    pipe.scheduler = TLCMFlowMatchScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_flux(pipe, latents: torch.Tensor, height: int, width: int, steps: int, seed: int) -> torch.Tensor:
    """The official loop around the tiny transformer, called as FluxPipeline calls it (packed latents)."""
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=16)
    image_ids = pipe._prepare_latent_image_ids(1, height // 16, width // 16, latents.device, latents.dtype)
    guidance = torch.full([1], GUIDANCE, dtype=torch.float32)
    sigmas = torch.tensor(sigmas_by_hand(steps, tokens(height, width)), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    x = latents
    with torch.no_grad():
        for i in range(steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            t = (sigma * 1000).expand(1)
            v = pipe.transformer(hidden_states=x, timestep=t / 1000, guidance=guidance, pooled_projections=pooled,
                                 encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=image_ids,
                                 return_dict=False)[0]
            x0 = x + (0 - sigma) * v
            xi = torch.randn(x0.shape, generator=generator)
            x = sigma_next * xi + (1 - sigma_next) * x0
    return x


def run_pipe(pipe, latents, height, width, steps):
    return pipe(PROMPT, height=height, width=width, num_inference_steps=steps, guidance_scale=GUIDANCE,
                latents=latents.clone(), output_type="latent", max_sequence_length=16).images


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_pipeline_matches_the_official_loop(flux_pipe, steps):
    height, width = 64, 96
    latents = torch.randn(1, tokens(height, width), 16, generator=torch.Generator().manual_seed(10 + steps))
    flux_pipe.scheduler.set_noise_generator(torch.Generator().manual_seed(steps))
    try:
        got = run_pipe(flux_pipe, latents, height, width, steps)
    finally:
        flux_pipe.scheduler.set_noise_generator(None)
    expected = reference_flux(flux_pipe, latents, height, width, steps, seed=steps)
    assert (got - expected).abs().max() <= 1e-5
    hand = torch.tensor(sigmas_by_hand(steps, tokens(height, width)), dtype=torch.float32)
    assert torch.allclose(flux_pipe.scheduler.sigmas, hand, rtol=0, atol=1e-6)


def test_pipeline_global_rng_as_the_official_scheduler(flux_pipe):
    """Without a noise generator, fresh noise comes from torch's global RNG (FluxPipeline passes none)."""
    latents = torch.randn(1, tokens(64, 64), 16, generator=torch.Generator().manual_seed(20))
    torch.manual_seed(21)
    got = run_pipe(flux_pipe, latents, 64, 64, 4)
    assert (got - reference_flux(flux_pipe, latents, 64, 64, 4, seed=21)).abs().max() <= 1e-5


def test_pipeline_decodes_and_img2img_runs(flux_pipe):
    from diffusers import FluxImg2ImgPipeline
    image = flux_pipe(PROMPT, height=64, width=64, num_inference_steps=4, guidance_scale=GUIDANCE,
                      generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=16).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    img2img = FluxImg2ImgPipeline.from_pipe(flux_pipe)
    img2img.set_progress_bar_config(disable=True)
    calls = []
    img2img(PROMPT, image=image, strength=0.5, height=64, width=64, num_inference_steps=4,
            guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0), output_type="latent",
            max_sequence_length=16, callback_on_step_end=lambda p, i, t, kw: calls.append(float(t)) or kw)
    # strength 0.5 keeps the last 2 of the 4 shifted sigmas (diffusers' img2img rule)
    assert calls == pytest.approx([s * 1000 for s in sigmas_by_hand(4, tokens(64, 64))[2:4]], abs=1e-3)
