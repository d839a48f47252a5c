"""TLCMScheduler inside diffusers' SDXL txt2img, img2img and ControlNet pipelines (tiny kit).

Final latents are compared with the official VP loop of ``tests/reference_tlcm.py`` on the kit's UNet and
timesteps with its written-out tables, never with ``tlcm.schedules``/``tlcm.sampling`` (which the scheduler
wraps).
"""
import pytest
import torch
from diffusers import (StableDiffusionXLControlNetPipeline, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline)
from PIL import Image

from reference_tlcm import PARTIAL_DENOISE, README_TABLE, forward_diffuse, reference_loop, seeded_normal
from tlcm.scheduler import TLCMScheduler
from tlcm.testing.tiny import tiny_controlnet

SIZE = 64
LATENT = (1, 4, SIZE // 8, SIZE // 8)


def kit_eps(pipe, prompt):
    """ε̂(z, t) of the pipeline's UNet for ``prompt`` without CFG (SDXL size ids: 64x64, no crop)."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)
    return lambda z, t: pipe.unet(z, t, encoder_hidden_states=embeds,
                                  added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample


class TimestepRecorder:
    """Records the UNet timesteps a pipeline visits (forward pre-hook, nothing else changes)."""

    def __init__(self, unet):
        self.seen = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.seen.append(int(torch.as_tensor(t).flatten()[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def components(tiny_pipe):
    parts = dict(tiny_pipe.components)
    parts["scheduler"] = TLCMScheduler.from_config(tiny_pipe.scheduler.config)
    return parts


def test_from_sdxl_config_keeps_the_noise_schedule(tiny_pipe):
    scheduler = TLCMScheduler.from_config(tiny_pipe.scheduler.config)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.prediction_type == "epsilon"
    assert float(scheduler.alphas_cumprod[999]) == pytest.approx(0.0046601, rel=1e-4)
    assert scheduler.config.eta == 1.0 and scheduler.config.schedule == "tlcm"


@pytest.mark.parametrize("steps,expected", [(2, [999, 499]), (4, [999, 749, 499, 124])])
def test_txt2img_visits_the_table(components, steps, expected):
    pipe = StableDiffusionXLPipeline(**components)
    with TimestepRecorder(pipe.unet) as rec:
        image = pipe("a blue square", num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert rec.seen == expected
    assert image.size == (SIZE, SIZE)


def test_txt2img_explicit_timesteps_and_cfg(components):
    pipe = StableDiffusionXLPipeline(**components)
    with TimestepRecorder(pipe.unet) as rec:
        pipe("a blue square", negative_prompt="blurry", timesteps=[999, 499, 124], guidance_scale=2.0,
             height=SIZE, width=SIZE, output_type="latent")
    assert rec.seen == [999, 499, 124]       # CFG batches cond/uncond in one call per step


def test_same_seed_same_image_other_seed_other_image(components):
    pipe = StableDiffusionXLPipeline(**components)

    def run(seed):
        return pipe("a blue square", num_inference_steps=4, guidance_scale=0.0, height=SIZE, width=SIZE,
                    output_type="latent", generator=torch.Generator().manual_seed(seed)).images
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_txt2img_result_is_the_last_x0_of_the_reference_loop(components, eta):
    """One generator: the start latent, then one fresh draw per re-noise (eta 1); eta 0 is the DDIM jump.
    The pipeline's output is the last x̂0, not a latent re-noised after the last step."""
    scheduler = TLCMScheduler.from_config(components["scheduler"].config, eta=eta)
    pipe = StableDiffusionXLPipeline(**{**components, "scheduler": scheduler})
    out = pipe("a blue square", num_inference_steps=4, guidance_scale=0.0, height=SIZE, width=SIZE,
               output_type="latent", generator=torch.Generator().manual_seed(3)).images
    noise = seeded_normal(3, LATENT)
    with torch.no_grad():
        reference = reference_loop(kit_eps(pipe, "a blue square"), noise(), README_TABLE[4], eta=eta, noise=noise)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_img2img_diffusers_strength_and_tlcm_rule(components):
    pipe = StableDiffusionXLImg2ImgPipeline(**components)
    init = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    with TimestepRecorder(pipe.unet) as rec:          # diffusers convention: tail int(4 * 0.5) = 2 steps
        pipe("a red square", image=init, strength=0.5, num_inference_steps=4, guidance_scale=0.0,
             output_type="latent")
    assert rec.seen == [499, 124]
    # TLCM rule, as tlcm.generate passes it: 4/0.45 = 8.89 -> the 8-step tail (round would give 444, ...)
    pipe.scheduler.set_timesteps(4, strength=0.45)
    rule = pipe.scheduler.timesteps.tolist()
    assert rule == PARTIAL_DENOISE[4, 0.45, "tlcm"] == [499, 374, 249, 124]
    pipe.scheduler.set_timesteps(4, strength=0.7)     # 4/0.7 = 5.71 -> the 5-step tail
    assert pipe.scheduler.timesteps.tolist() == PARTIAL_DENOISE[4, 0.7, "tlcm"]
    latent = 2.0 * torch.randn(LATENT, generator=torch.Generator().manual_seed(8))   # a latent image: no VAE
    with TimestepRecorder(pipe.unet) as rec:
        out = pipe("a red square", image=latent, strength=1.0, timesteps=rule, guidance_scale=0.0,
                   output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert rec.seen == rule
    noise = seeded_normal(0, LATENT)                  # start: the latent diffused to t = 499 with the 1st draw
    with torch.no_grad():
        reference = reference_loop(kit_eps(pipe, "a red square"), forward_diffuse(latent, noise(), rule[0]), rule,
                                   eta=1.0, noise=noise)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_controlnet_pipeline(components, tiny_pipe):
    controlnet = tiny_controlnet(tiny_pipe.unet)
    pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet)
    plain = StableDiffusionXLPipeline(**components)
    hint = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    kwargs = dict(num_inference_steps=4, guidance_scale=0.0, height=SIZE, width=SIZE, output_type="latent")
    with TimestepRecorder(pipe.unet) as rec:
        off = pipe("a cat", image=hint, controlnet_conditioning_scale=0.0,
                   generator=torch.Generator().manual_seed(5), **kwargs).images
    assert rec.seen == [999, 749, 499, 124]
    ref = plain("a cat", generator=torch.Generator().manual_seed(5), **kwargs).images
    torch.testing.assert_close(off, ref)              # scale 0: exactly the plain TLCM result
    on = pipe("a cat", image=hint, controlnet_conditioning_scale=1.0,
              generator=torch.Generator().manual_seed(5), **kwargs).images
    assert not torch.allclose(on, ref)                # the control signal reaches the UNet


def test_bad_scheduler_use():
    scheduler = TLCMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 4, 2, 2), 999, torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="exactly one"):
        scheduler.set_timesteps()
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(timesteps=[124, 499])
    with pytest.raises(ValueError, match="steps"):
        scheduler.set_timesteps(0)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="not in this scheduler"):
        scheduler.step(torch.zeros(1, 4, 2, 2), 749, torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="eta"):
        TLCMScheduler(eta=2.0)
    with pytest.raises(ValueError, match="prediction_type"):
        TLCMScheduler(prediction_type="flow")


def test_add_noise_is_forward_diffusion():
    scheduler = TLCMScheduler()
    x0, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    t = torch.tensor([499, 124])
    a = scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(scheduler.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise)
