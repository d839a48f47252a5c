"""The WebUI TLCM sampler + schedule through the real k-diffusion ``CompVisDenoiser`` on the tiny SDXL UNet.

Runs the stand-in WebUI's generation path (``tests/webui_stub``): host schedule selection, start-noise
scaling, img2img/hires step arithmetic, CFG wrapper and the seeded ``ImageRNG``; checks the exact milestone
timesteps the UNet receives against the README tables and hand-derived partial-denoise tables, and the
samples against the official VP-space loop of ``tests/reference_tlcm.py`` (never against ``tlcm.schedules`` /
``tlcm.sampling``, which the extension wraps).
"""
import pytest
import torch

from reference_tlcm import PARTIAL_DENOISE, README_TABLE, forward_diffuse, reference_loop
from tlcm.testing.tiny import tiny_unet
from webui_stub.harness import FakeForgeFlux, FakeSDXL, conditioning, load_extension, purge, start_webui

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


def host_noise(seeds, shape=(4, 8, 8)):
    """The WebUI's ImageRNG, written out: one generator per seed, each draw stacks one tensor per image
    (the start noise first, then one fresh draw per re-noise)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return lambda: torch.stack([torch.randn(shape, generator=g) for g in gens])


def model_eps(model, cond):
    """ε̂(z, t) of the stand-in model at an integer timestep (what CompVisDenoiser calls)."""
    return lambda z, t: model.eps(z, torch.full((z.shape[0],), float(t)), cond)


def txt2img_reference(model, seeds, cond, timesteps, eta=1.0):
    """txt2img: VP noise at the first milestone is the first draw; then the official loop (eta 1)."""
    noise = host_noise(seeds)
    return reference_loop(model_eps(model, cond), noise(), timesteps, eta=eta, noise=noise)


def img2img_reference(model, seeds, cond, init, timesteps):
    """img2img / hires pass: the image latent diffused to the first milestone with the first draw."""
    noise = host_noise(seeds)
    z = forward_diffuse(init, noise(), timesteps[0])
    return reference_loop(model_eps(model, cond), z, timesteps, eta=1.0, noise=noise)


@pytest.mark.parametrize("steps", range(1, 9))
def test_host_schedule_maps_back_to_the_exact_milestones(webui, steps):
    p = make_p(webui, steps=steps)
    sampler = webui.sd_samplers.create_sampler("TLCM", webui.shared.sd_model)
    sigmas = sampler.get_sigmas(p, steps)
    assert sigmas[-1] == 0 and len(sigmas) == steps + 1
    t = sampler.model_wrap.sigma_to_t(sigmas[:-1])
    assert t.tolist() == [float(x) for x in README_TABLE[steps]]
    assert p.extra_generation_params["Schedule type"] == "TLCM"


def test_txt2img_visits_999_749_499_124_and_matches_the_reference_loop(webui_unet):
    """The sampler is the official loop (eta 1: fresh noise from the host RNG at every milestone); the
    WebUI has no eta setting, so the deterministic DDIM jump (eta 0) must not be what it runs."""
    webui = webui_unet
    model = webui.shared.sd_model
    p = make_p(webui)
    samples, _ = webui.processing.process_images(p)
    assert unet_timesteps(model) == [999.0, 749.0, 499.0, 124.0]
    assert p.sampler.callback_steps == [0, 1, 2, 3]
    with torch.no_grad():
        reference = txt2img_reference(model, [SEED], p.cond, README_TABLE[4])
        deterministic = txt2img_reference(model, [SEED], p.cond, README_TABLE[4], eta=0.0)
    torch.testing.assert_close(samples, reference, rtol=1e-4, atol=1e-4)   # CFG batches cond+uncond
    assert (deterministic - reference).abs().max() > 1e-2


def unet_batches(model) -> list[int]:
    """The batch size of each UNet call."""
    return [len(call) for call in model.timesteps]


@pytest.mark.parametrize("saved", [None, 0.25])
def test_cfg_1_runs_one_unet_batch_per_step_and_leaves_the_setting_as_it_was(webui, saved):
    """A1111 1.10's wrapper (the stand-in copies its skip rule) evaluates cond + uncond even at CFG 1; the
    TLCM sampler lets it skip the uncond pass there: one batch of 2 images per step instead of 4, the same
    images, and the user's ``skip_early_cond`` (unset, or their own value) untouched afterwards."""
    opts, model = webui.shared.opts, webui.shared.sd_model
    if saved is not None:
        opts.skip_early_cond = saved
    p = make_p(webui, seeds=[SEED, SEED + 1])
    samples, info = webui.processing.process_images(p)
    assert unet_batches(model) == [2, 2, 2, 2]
    assert opts.data.get("skip_early_cond") == saved and ("skip_early_cond" in opts.data) == (saved is not None)
    assert ("Skip Early CFG: 0.25" in info) == (saved is not None) and "Skip Early CFG: 1.0" not in info
    with torch.no_grad():
        reference = txt2img_reference(model, [SEED, SEED + 1], p.cond, README_TABLE[4])
    torch.testing.assert_close(samples, reference, rtol=1e-5, atol=1e-5)


def test_cfg_above_1_keeps_the_negative_prompt_pass(webui):
    """The TLCM sampler picked by hand at CFG 7: the negative prompt matters, both passes run."""
    model = webui.shared.sd_model
    webui.processing.process_images(make_p(webui, cfg_scale=7.0))
    assert unet_batches(model) == [2, 2, 2, 2] and "skip_early_cond" not in webui.shared.opts.data


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


@pytest.mark.parametrize("strength", [0.5, 0.45, 0.7])
def test_hires_second_pass_follows_the_partial_denoise_rule(webui, strength):
    """Hires pass at strength d: the last 4 of the int(4/d)-step schedule (0.45 -> 8 steps, round would give
    9; 0.7 -> 5 steps, round would give 6), re-noised from the first pass with a fresh RNG."""
    model = webui.shared.sd_model
    p = make_p(webui, enable_hr=True, denoising_strength=strength)
    samples, _ = webui.processing.process_images(p)
    second = PARTIAL_DENOISE[4, strength, "tlcm"]
    assert unet_timesteps(model) == [float(t) for t in README_TABLE[4] + second]
    first = txt2img_reference(model, [SEED], p.cond, README_TABLE[4])
    torch.testing.assert_close(samples, img2img_reference(model, [SEED], p.cond, first, second),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strength,expected", [(0.3, [307, 230, 153, 76]), (0.45, [499, 374, 249, 124]),
                                               (0.7, [749, 499, 249, 124])])
@pytest.mark.parametrize("fix_steps", [False, True])
def test_img2img_follows_the_rule_whatever_fix_steps_says(webui, fix_steps, strength, expected):
    """4 steps at strength 0.3: int(13.3) = 13-step grid int(999 - 999i/13), i = 9..12; 0.45 and 0.7 are
    ratios where int and round differ (tests/reference_tlcm.py derives them)."""
    model = webui.shared.sd_model
    webui.shared.opts.img2img_fix_steps = fix_steps
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    p = make_p(webui, init_latent=init, denoising_strength=strength)
    samples, info = webui.processing.process_images(p)
    assert expected == PARTIAL_DENOISE[4, strength, "tlcm"]
    assert unet_timesteps(model) == [float(t) for t in expected]
    # img2img start: x0 + σ_start·ξ, i.e. the VP forward diffusion of the image to the first milestone
    torch.testing.assert_close(samples, img2img_reference(model, [SEED], p.cond, init, expected),
                               rtol=1e-4, atol=1e-4)
    assert f"Denoising strength: {strength}" in info


def test_other_webui_schedules_stay_selectable_with_the_tlcm_sampler(webui):
    p = make_p(webui, scheduler="Karras")
    sampler = webui.sd_samplers.create_sampler("TLCM", webui.shared.sd_model)
    sigmas = sampler.get_sigmas(p, 4)
    assert p.extra_generation_params["Schedule type"] == "Karras"
    assert sampler.model_wrap.sigma_to_t(sigmas[1:2]).item() not in README_TABLE[4]


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


def test_forge_flux_runs_the_official_tlcm_flux_loop(webui):
    """FLUX on Forge (its flow predictor): sigmas = FLUX's shift by the predictor's mu of linspace(1, 1/n, n),
    then 0; start = Forge's σ0·ξ + (1 − σ0)·0 = ξ; each step x ← (1 − σ')·x̂0 + σ'·ξ' with the host's next
    draw; the last x̂0 is the result (official scheduler, written out)."""
    import math
    webui.shared.sd_model = model = FakeForgeFlux(mu=0.8)
    p = make_p(webui, steps=3)
    samples, _ = webui.processing.process_images(p)
    sigmas = [math.exp(0.8) / (math.exp(0.8) + (1 / t - 1)) for t in (1.0, 2 / 3, 1 / 3)] + [0.0]
    assert [call[0] for call in model.sigmas_seen] == pytest.approx(sigmas[:3], abs=1e-6)
    noise = host_noise([SEED])
    x = noise()
    for i in range(3):
        sigma = torch.full((1,), sigmas[i])
        x0 = x - FakeForgeFlux.velocity(x, sigma, p.cond) * sigmas[i]
        x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * noise() if sigmas[i + 1] > 0 else x0
    torch.testing.assert_close(samples, x, rtol=1e-5, atol=1e-5)


def test_a_flow_model_without_the_flux_shift_is_refused(webui):
    webui.shared.sd_model = model = FakeForgeFlux()
    del model.forge_objects.unet.model.predictor.mu
    with pytest.raises(ValueError, match="TLCM supports FLUX.1"):
        webui.processing.process_images(make_p(webui))


def test_v_prediction_zero_snr_model_runs_the_v_loop(webui_unet):
    """A1111 1.10 on a v-prediction model with its "Zero Terminal SNR" noise schedule (NoobAI-XL v-pred):
    the model's ᾱ is rescaled with ᾱ_999 kept at 4.9e-8 and the host's v denoiser (CompVisVDenoiser) gives
    x̂0; the TLCM sampler visits 999/749/499/124 and equals the official loop for a v model written out on
    diffusers' zero-SNR ᾱ (exactly 0 at 999, where x̂0 = −v), within the 4.9e-8 the host keeps."""
    import math

    from diffusers import DDPMScheduler
    webui = webui_unet
    model = webui.shared.sd_model
    exact = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True).alphas_cumprod.double()
    host = exact.clone()
    host[-1] = 4.8973451890853435e-08                         # A1111's rescale_zero_terminal_snr_abar
    model.alphas_cumprod, model.parameterization = host.float(), "v"
    p = make_p(webui)
    samples, _ = webui.processing.process_images(p)
    assert unet_timesteps(model) == [999.0, 749.0, 499.0, 124.0]
    noise = host_noise([SEED])
    z, timesteps = noise(), README_TABLE[4]
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            a = float(exact[t])
            v = model.eps(z, torch.full((1,), float(t)), p.cond)                # the UNet output, read as v
            x0 = math.sqrt(a) * z - math.sqrt(1 - a) * v
            if i + 1 == len(timesteps):
                break
            a_next = float(exact[timesteps[i + 1]])
            z = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * noise()
    torch.testing.assert_close(samples, x0, rtol=0, atol=2e-3)
