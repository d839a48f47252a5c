"""``modules.processing``: the order of one generation and the infotext, reduced to what samplers see.

Order (A1111 1.10 ``process_images``): scripts' ``before_process`` -> ``fix_p_invalid_sampler_and_scheduler``
-> ``process`` -> per batch a seeded ``ImageRNG`` -> first pass (txt2img ``sample`` with ``rng.next()`` noise,
or img2img ``sample_img2img``) -> optional hires pass (new RNG, ``sample_img2img(steps=hires steps)``) ->
``create_infotext``. Conditioning is passed in ready-made (``p.cond``/``p.uncond``), no text encoders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules import infotext_utils, rng, sd_samplers, shared


@dataclass
class StableDiffusionProcessing:
    cond: Any = None
    uncond: Any = None
    prompt: str = ""
    seeds: list = field(default_factory=lambda: [1])
    width: int = 64
    height: int = 64
    steps: int = 20
    cfg_scale: float = 7.0
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    eta: float | None = None
    denoising_strength: float = 0.0
    init_latent: Any = None
    enable_hr: bool = False
    hr_second_pass_steps: int = 0
    hr_scheduler: str | None = None
    is_hr_pass: bool = False
    scripts: Any = None
    script_args: list = field(default_factory=list)
    extra_generation_params: dict = field(default_factory=dict)
    comments: dict = field(default_factory=dict)
    rng: Any = None
    sampler: Any = None

    def comment(self, text):
        self.comments[text] = 1


def create_infotext(p):
    config = sd_samplers.find_sampler_config(p.sampler_name)
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.seeds[0],
        "Size": f"{p.width}x{p.height}",
        "ENSD": shared.opts.eta_noise_seed_delta if config.options.get("uses_ensd") and shared.opts.eta_noise_seed_delta else None,
        **p.extra_generation_params,
    }
    return ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None)


def process_images(p):
    """Returns (final latents, infotext)."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
    if p.scripts is not None:
        p.scripts.process(p)
    p.rng = rng.ImageRNG((4, p.height // 8, p.width // 8), p.seeds)
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=0, prompts=[p.prompt], seeds=p.seeds, subseeds=p.seeds)
    p.sampler = sd_samplers.create_sampler(p.sampler_name, shared.sd_model)
    if p.init_latent is None:
        samples = p.sampler.sample(p, p.rng.next(), p.cond, p.uncond)
    else:
        p.extra_generation_params["Denoising strength"] = p.denoising_strength
        samples = p.sampler.sample_img2img(p, p.init_latent, p.rng.next(), p.cond, p.uncond)
    if p.enable_hr:
        p.is_hr_pass = True
        p.hr_scheduler = p.hr_scheduler or p.scheduler
        p.rng = rng.ImageRNG(samples.shape[1:], p.seeds)
        p.sampler = sd_samplers.create_sampler(p.sampler_name, shared.sd_model)
        samples = p.sampler.sample_img2img(p, samples, p.rng.next(), p.cond, p.uncond,
                                           steps=p.hr_second_pass_steps or p.steps)
        p.is_hr_pass = False
    return samples, create_infotext(p)
