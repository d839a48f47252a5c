"""Parity: TLCMScheduler and sample_tlcm reproduce the official TLCM loop on the tiny SDXL UNet.

The reference below is written from the formulas of ``OPPO-Mente-Lab/TLCM:inference.py`` (docs/method.md
§1.1) and shares no code with ``tlcm``: its own prompt encoding, diffusers' ``DDPMScheduler`` for ᾱ and
``add_noise``, its own index table, fresh ``randn`` per milestone and the last x̂0 as the result.
"""
import pytest
import torch
from diffusers import DDPMScheduler

from tlcm.sampling import sample_tlcm
from tlcm.scheduler import TLCMScheduler

REFERENCE_INDICES = {1: [0, 8], 2: [0, 4, 8], 3: [0, 4, 7, 8], 4: [0, 2, 4, 7, 8], 5: [0, 2, 4, 6, 7, 8],
                     6: [0, 2, 4, 5, 6, 7, 8], 7: [0, 2, 3, 4, 5, 6, 7, 8], 8: list(range(9))}
SIZE = 64


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def encode_like_official(pipe, prompts):
    """Penultimate hidden states of both encoders, concatenated; pooled output of the second."""
    embeds = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        embeds.append(out.hidden_states[-2])
        pooled = out[0]
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * len(prompts), dtype=torch.float32)
    return torch.cat(embeds, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}


def official_loop(unet, cond, added, latents, steps, generator, deterministic=False):
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear")
    ac = ddpm.alphas_cumprod
    ts = torch.linspace(999, 0, 9, dtype=int)[REFERENCE_INDICES[steps]]
    sample = latents
    for j in range(len(ts) - 1):
        t = ts[j]
        eps = unet(sample, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample
        x0 = (sample - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        if deterministic:       # the paper's g_θ: DDIM jump with the model's own ε̂
            sample = ac[ts[j + 1]].sqrt() * x0 + (1 - ac[ts[j + 1]]).sqrt() * eps
        else:
            sample = ddpm.add_noise(x0, torch.randn(x0.shape, generator=generator), ts[j + 1:j + 2])
    return x0


@pytest.fixture(scope="module")
def setup(tiny_pipe):
    with torch.no_grad():
        cond, added = encode_like_official(tiny_pipe, ["a red striped circle", "一只猫"])
    latents = torch.randn((2, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(7))
    return tiny_pipe, cond, added, latents


def scheduler_loop(unet, scheduler, cond, added, latents, steps, generator):
    scheduler.set_timesteps(steps)
    sample = latents
    for t in scheduler.timesteps:
        eps = unet(sample, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample
        sample = scheduler.step(eps, t, sample, generator=generator).prev_sample
    return sample


def sigma_space_loop(unet, steps, cond, added, latents, generator, eta):
    """sample_tlcm with a VE-space denoiser around the same UNet; σ is mapped back to its integer t."""
    scheduler = TLCMScheduler()
    scheduler.set_timesteps(steps)
    ac = scheduler.alphas_cumprod.double()
    ts = scheduler.timesteps
    table = ((1 - ac[ts]) / ac[ts]).sqrt().float()
    sigmas = torch.cat([table, table.new_zeros(1)])

    def denoiser(x, sigma):
        t = ts[(table - sigma[0]).abs().argmin()]
        z = x / (1 + sigma[0] ** 2).sqrt()
        eps = unet(z, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample
        return x - sigma[0] * eps

    def noise_sampler(sigma, sigma_next):
        return torch.randn(latents.shape, generator=generator)

    x = latents * (1 + sigmas[0] ** 2).sqrt()
    return sample_tlcm(denoiser, x, sigmas, noise_sampler=noise_sampler, eta=eta, disable=True)


@pytest.mark.parametrize("steps", range(1, 9))
def test_scheduler_and_sigma_sampler_match_official_loop(setup, steps):
    pipe, cond, added, latents = setup
    with torch.no_grad():
        ref = official_loop(pipe.unet, cond, added, latents, steps, torch.Generator().manual_seed(steps))
        ours = scheduler_loop(pipe.unet, TLCMScheduler.from_config(pipe.scheduler.config), cond, added, latents,
                              steps, torch.Generator().manual_seed(steps))
        ve = sigma_space_loop(pipe.unet, steps, cond, added, latents, torch.Generator().manual_seed(steps), eta=1.0)
    assert rel_err(ours, ref) <= 1e-5
    assert rel_err(ve, ref) <= 1e-5
    assert rel_err(ve, ours) <= 1e-5


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_deterministic_variant_is_the_ddim_jump(setup, steps):
    pipe, cond, added, latents = setup
    with torch.no_grad():
        ref = official_loop(pipe.unet, cond, added, latents, steps, None, deterministic=True)
        ours = scheduler_loop(pipe.unet, TLCMScheduler(eta=0.0), cond, added, latents, steps, None)
        ve = sigma_space_loop(pipe.unet, steps, cond, added, latents, None, eta=0.0)
    assert rel_err(ours, ref) <= 1e-5
    assert rel_err(ve, ref) <= 1e-5


def test_pipeline_output_is_the_official_result(setup):
    """Through StableDiffusionXLPipeline (its own encoding, CFG off): same latent as the reference loop."""
    pipe, cond, added, latents = setup
    original = pipe.scheduler
    pipe.scheduler = TLCMScheduler.from_config(original.config)
    try:
        with torch.no_grad():
            out = pipe(["a red striped circle", "一只猫"], num_inference_steps=4, guidance_scale=0.0,
                       height=SIZE, width=SIZE, latents=latents.clone(), output_type="latent",
                       generator=torch.Generator().manual_seed(3)).images
            ref = official_loop(pipe.unet, cond, added, latents, 4, torch.Generator().manual_seed(3))
    finally:
        pipe.scheduler = original
    assert rel_err(out, ref) <= 1e-5
