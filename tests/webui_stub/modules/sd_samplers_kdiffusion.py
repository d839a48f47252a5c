"""``modules.sd_samplers_kdiffusion``: ``KDiffusionSampler`` (schedule selection, start noise, img2img tail)."""
import inspect

import k_diffusion.external
import k_diffusion.sampling
import torch

from modules import devices, sd_samplers_cfg_denoiser, sd_samplers_common, sd_schedulers, shared
from modules.shared import opts

samplers_k_diffusion = [
    ('Euler a', 'sample_euler_ancestral', ['k_euler_a', 'k_euler_ancestral'], {"uses_ensd": True}),
    ('Euler', 'sample_euler', ['k_euler'], {}),
    ('DPM++ 2M', 'sample_dpmpp_2m', ['k_dpmpp_2m'], {'scheduler': 'karras'}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
    if callable(funcname) or hasattr(k_diffusion.sampling, funcname)
]


class ForgeScheduleLinker(torch.nn.Module):
    """Forge dfdcbab6 ``k_diffusion.external.ForgeScheduleLinker``: the model predictor's sigma table; the
    model call returns the predictor's x̂0 (``calculate_denoised``) of the model's output."""

    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor
        self.sigmas = predictor.sigmas
        self.inner_model = None

    def forward(self, x, sigma, cond):
        return self.predictor.calculate_denoised(sigma, self.inner_model.apply_model(x, sigma, cond), x)


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        forge_unet = getattr(getattr(shared.sd_model, "forge_objects", None), "unet", None)
        predictor = getattr(getattr(forge_unet, "model", None), "predictor", None)
        if self.model_wrap is None and predictor is not None:         # Forge (a model with its predictor)
            self.model_wrap = ForgeScheduleLinker(predictor)
            self.model_wrap.inner_model = shared.sd_model
        if self.model_wrap is None:          # A1111 1.10: the v denoiser for a v-parameterised model
            denoiser = (k_diffusion.external.CompVisVDenoiser if getattr(shared.sd_model, "parameterization", "eps")
                        == "v" else k_diffusion.external.CompVisDenoiser)
            self.model_wrap = denoiser(shared.sd_model, quantize=opts.enable_quantization)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.options = options or {}
        self.func = funcname if callable(funcname) else getattr(k_diffusion.sampling, self.funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        discard_next_to_last_sigma = self.config is not None and self.config.options.get('discard_next_to_last_sigma', False)
        if opts.always_discard_next_to_last_sigma and not discard_next_to_last_sigma:
            discard_next_to_last_sigma = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard_next_to_last_sigma else 0

        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or 'Automatic'
        if scheduler_name == 'Automatic':
            scheduler_name = self.config.options.get('scheduler', None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)

        m_sigma_min, m_sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
        sigma_min, sigma_max = (0.1, 10) if opts.use_old_karras_scheduler_sigmas else (m_sigma_min, m_sigma_max)

        if scheduler is None or scheduler.function is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            sigmas_kwargs = {'sigma_min': sigma_min, 'sigma_max': sigma_max}
            if scheduler.label != 'Automatic' and not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            elif scheduler.label != p.extra_generation_params.get("Schedule type"):
                p.extra_generation_params["Hires schedule type"] = scheduler.label
            if scheduler.need_inner_model:
                sigmas_kwargs['inner_model'] = self.model_wrap
            sigmas = scheduler.function(n=steps, **sigmas_kwargs, device=devices.cpu)

        if discard_next_to_last_sigma:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    def _kwargs_for(self, p, sigmas):
        extra_params_kwargs = self.initialize(p)
        if 'sigmas' in inspect.signature(self.func).parameters:
            extra_params_kwargs['sigmas'] = sigmas
        return extra_params_kwargs

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        extra_params_kwargs = self._kwargs_for(p, sigma_sched)
        self.last_latent = x
        self.sampler_extra_args = {'cond': conditioning, 'image_cond': image_conditioning, 'uncond': unconditional_conditioning,
                                   'cond_scale': p.cfg_scale, 's_min_uncond': self.s_min_uncond}
        return self.launch_sampling(t_enc + 1, lambda: self.func(self.model_wrap_cfg, xi, extra_args=self.sampler_extra_args,
                                                                 disable=False, callback=self.callback_state, **extra_params_kwargs))

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        if hasattr(self.model_wrap, "predictor"):            # Forge: the predictor scales the start noise
            x = self.model_wrap.predictor.noise_scaling(sigmas[0], x, torch.zeros_like(x),
                                                        max_denoise=opts.sgm_noise_multiplier)
        elif opts.sgm_noise_multiplier:
            p.extra_generation_params["SGM noise multiplier"] = True
            x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        else:
            x = x * sigmas[0]
        extra_params_kwargs = self._kwargs_for(p, sigmas)
        self.last_latent = x
        self.sampler_extra_args = {'cond': conditioning, 'image_cond': image_conditioning, 'uncond': unconditional_conditioning,
                                   'cond_scale': p.cfg_scale, 's_min_uncond': self.s_min_uncond}
        return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args,
                                                             disable=False, callback=self.callback_state, **extra_params_kwargs))
