"""The WebUI TLCM sampler + schedule through the real k-diffusion ``CompVisDenoiser`` on the tiny SDXL UNet.

Runs the stand-in WebUI's generation path (``tests/webui_stub``): host schedule selection, start-noise
scaling, img2img/hires step arithmetic, CFG wrapper and the seeded ``ImageRNG``; checks the exact milestone
timesteps the UNet receives and parity with the core sampler and with an independent VP-space loop.
"""
import pytest
import torch

from tlcm.sampling import sample_tlcm
from tlcm.schedules import schedule_timesteps, tlcm_timesteps
from tlcm.testing.tiny import tiny_unet
from webui_stub.harness import FakeSDXL, conditioning, load_extension, purge, start_webui

SEED = 1234


@pytest.fixture(scope="module")
def unet():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # the tiny UNet is latency-bound; CI cores are shared
    yield tiny_unet(seed=0)
    torch.set_num_threads(threads)


@pytest.fixture
def webui(monkeypatch):
    """Stand-in WebUI with the extension loaded and a cheap ε model (step arithmetic, noise, schedules)."""
    webui = start_webui(monkeypatch)
    webui.shared.sd_model = FakeSDXL(None)
    load_extension(webui)
    yield webui
    purge()


@pytest.fixture
def webui_unet(webui, unet):
    """The same with the tiny SDXL UNet behind CompVisDenoiser."""
    webui.shared.sd_model = FakeSDXL(unet)
    return webui


def make_p(webui, **kwargs):
    batch = len(kwargs.get("seeds", [SEED]))
    defaults = dict(cond=conditioning(batch, 1), uncond=conditioning(batch, 2), seeds=[SEED], steps=4, cfg_scale=1.0,
                    sampler_name="TLCM", scheduler="Automatic")
    return webui.processing.StableDiffusionProcessing(**{**defaults, **kwargs})


def unet_timesteps(model):
    """Timesteps per UNet call (the CFG wrapper batches cond and uncond: all entries must agree)."""
    out = []
    for call in model.timesteps:
        assert len(set(call)) == 1, call
        out.append(call[0])
    return out


def reference_loop(model, seeds, cond, timesteps, shape=(4, 8, 8)):
    """The official TLCM loop in VP space (``inference.py``), drawing noise from per-seed generators the way
    the WebUI's ImageRNG does: start noise first, then one fresh draw per re-noise."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    draw = lambda: torch.stack([torch.randn(shape, generator=g) for g in gens])  # noqa: E731
    ac = model.alphas_cumprod
    z = draw()
    for i, t in enumerate(timesteps):
        eps = model.eps(z, torch.full((len(seeds),), float(t)), cond)
        x0 = (z - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        if i + 1 == len(timesteps):
            return x0
        t_next = timesteps[i + 1]
        z = ac[t_next].sqrt() * x0 + (1 - ac[t_next]).sqrt() * draw()


@pytest.mark.parametrize("steps", range(1, 9))
def test_host_schedule_maps_back_to_the_exact_milestones(webui, steps):
    p = make_p(webui, steps=steps)
    sampler = webui.sd_samplers.create_sampler("TLCM", webui.shared.sd_model)
    sigmas = sampler.get_sigmas(p, steps)
    assert sigmas[-1] == 0 and len(sigmas) == steps + 1
    t = sampler.model_wrap.sigma_to_t(sigmas[:-1])
    assert t.tolist() == [float(x) for x in tlcm_timesteps(steps)]
    assert p.extra_generation_params["Schedule type"] == "TLCM"


def test_txt2img_visits_999_749_499_124_and_matches_core_and_reference(webui_unet):
    webui = webui_unet
    model = webui.shared.sd_model
    p = make_p(webui)
    samples, _ = webui.processing.process_images(p)
    assert unet_timesteps(model) == [999.0, 749.0, 499.0, 124.0]
    assert p.sampler.callback_steps == [0, 1, 2, 3]

    reference = reference_loop(model, [SEED], p.cond, [999, 749, 499, 124])
    torch.testing.assert_close(samples, reference, rtol=1e-4, atol=1e-4)

    # the core sampler on the same k-diffusion denoiser, start x = √(1+σ0²)·ξ, same noise stream
    gen = torch.Generator().manual_seed(SEED)
    first = torch.randn(1, 4, 8, 8, generator=gen)
    denoiser = p.sampler.model_wrap
    sigmas = denoiser.sigmas[torch.tensor([999, 749, 499, 124])]
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    core = sample_tlcm(lambda x, s: denoiser(x, s, cond=p.cond), first * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                       disable=True, noise_sampler=lambda s, sn: torch.randn(1, 4, 8, 8, generator=gen))
    torch.testing.assert_close(samples, core, rtol=1e-4, atol=1e-4)   # CFG batches cond+uncond: float-level


def test_seed_reproduces_and_does_not_depend_on_the_batch(webui_unet):
    webui = webui_unet
    single, _ = webui.processing.process_images(make_p(webui))
    again, _ = webui.processing.process_images(make_p(webui))
    torch.testing.assert_close(single, again, rtol=0, atol=0)
    batch, _ = webui.processing.process_images(make_p(webui, seeds=[SEED, SEED + 5]))
    torch.testing.assert_close(batch[:1], single, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch[1], single[0], atol=1e-2)


def test_sgm_noise_multiplier_is_not_applied_twice(webui):
    plain, _ = webui.processing.process_images(make_p(webui))
    webui.shared.opts.sgm_noise_multiplier = True
    sgm, info = webui.processing.process_images(make_p(webui))
    torch.testing.assert_close(sgm, plain, rtol=5e-5, atol=5e-5)
    assert "SGM noise multiplier: True" in info


def test_hires_second_pass_follows_the_core_partial_denoise_rule(webui):
    model = webui.shared.sd_model
    p = make_p(webui, enable_hr=True, denoising_strength=0.5)
    webui.processing.process_images(p)
    expected = [999, 749, 499, 124] + schedule_timesteps(4, denoise=0.5)
    assert unet_timesteps(model) == [float(t) for t in expected]
    assert expected[4:] == [499, 374, 249, 124]


@pytest.mark.parametrize("fix_steps", [False, True])
def test_img2img_follows_the_core_rule_whatever_fix_steps_says(webui, fix_steps):
    model = webui.shared.sd_model
    webui.shared.opts.img2img_fix_steps = fix_steps
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    p = make_p(webui, init_latent=init, denoising_strength=0.3)
    samples, info = webui.processing.process_images(p)
    expected = schedule_timesteps(4, denoise=0.3)
    assert unet_timesteps(model) == [float(t) for t in expected]
    # img2img start: x0 + σ_start·ξ, i.e. the VP forward diffusion of the image to the first milestone
    gens = [torch.Generator().manual_seed(SEED)]
    ac = model.alphas_cumprod
    t0 = expected[0]
    z = ac[t0].sqrt() * init + (1 - ac[t0]).sqrt() * torch.randn(1, 4, 8, 8, generator=gens[0])
    x = z
    for i, t in enumerate(expected):
        eps = model.eps(x, torch.full((1,), float(t)), p.cond)
        x0 = (x - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        if i + 1 < len(expected):
            tn = expected[i + 1]
            x = ac[tn].sqrt() * x0 + (1 - ac[tn]).sqrt() * torch.randn(1, 4, 8, 8, generator=gens[0])
    torch.testing.assert_close(samples, x0, rtol=1e-4, atol=1e-4)
    assert "Denoising strength: 0.3" in info


def test_other_webui_schedules_stay_selectable_with_the_tlcm_sampler(webui):
    p = make_p(webui, scheduler="Karras")
    sampler = webui.sd_samplers.create_sampler("TLCM", webui.shared.sd_model)
    sigmas = sampler.get_sigmas(p, 4)
    assert p.extra_generation_params["Schedule type"] == "Karras"
    assert sampler.model_wrap.sigma_to_t(sigmas[1:2]).item() not in tlcm_timesteps(4)


def test_scheduler_rejects_impossible_step_counts(webui):
    from webui_tlcm.schedule import tlcm_scheduler
    denoiser = webui.sd_samplers.create_sampler("TLCM", webui.shared.sd_model).model_wrap
    with pytest.raises(ValueError, match="steps must be >= 1"):
        tlcm_scheduler(n=0, sigma_min=0.03, sigma_max=14.6, inner_model=denoiser, device="cpu")
    with pytest.raises(ValueError, match="num_segments"):
        tlcm_scheduler(n=1000, sigma_min=0.03, sigma_max=14.6, inner_model=denoiser, device="cpu")


def test_sampler_refuses_to_run_without_the_host_rng(webui):
    from webui_tlcm.sampler import host_noise_sampler
    with pytest.raises(RuntimeError, match="seeded RNG"):
        host_noise_sampler(object(), torch.zeros(1))
