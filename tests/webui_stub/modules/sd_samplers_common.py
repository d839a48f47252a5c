"""``modules.sd_samplers_common``: ``SamplerData``, img2img step arithmetic, the ``Sampler`` base class."""
import inspect
from collections import namedtuple

import k_diffusion.sampling
import torch

from modules.shared import opts

SamplerDataTuple = namedtuple('SamplerData', ['name', 'constructor', 'aliases', 'options'])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


def setup_img2img_steps(p, steps=None):
    """``steps`` given (hires pass) or "fix steps": schedule for steps/denoise, run ``steps``; else the tail."""
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = (steps or p.steps)
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class InterruptedException(BaseException):
    pass


class TorchHijack:
    """Replaces ``torch`` in ``k_diffusion.sampling`` so its ``randn_like`` draws from ``p.rng``."""

    def __init__(self, p):
        self.rng = p.rng

    def __getattr__(self, item):
        if item == 'randn_like':
            return self.randn_like
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def randn_like(self, x):
        return self.rng.next()


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.eta = None
        self.config: SamplerData = None
        self.last_latent = None
        self.s_min_uncond = None
        self.eta_option_field = 'eta_ancestral'
        self.eta_infotext_field = 'Eta'
        self.eta_default = 1.0
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}
        self.stop_at = None
        self.callback_steps = []

    def callback_state(self, d):
        step = d['i']
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        self.callback_steps.append(step)

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.step = 0
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)

        k_diffusion.sampling.torch = TorchHijack(p)

        extra_params_kwargs = {}
        if 'eta' in inspect.signature(self.func).parameters:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            extra_params_kwargs['eta'] = self.eta
        return extra_params_kwargs

    def add_infotext(self, p):
        pass
