"""``modules.sd_samplers_cfg_denoiser.CFGDenoiser``: cond and uncond in one batch, mixed by ``cond_scale``.

Like A1111 1.10 it evaluates the negative prompt even at CFG 1, and skips that pass (the cond output stands
in for it, mixed at 1.0) only where its own options say so, noting it in the infotext: steps with
step / total_steps <= ``opts.skip_early_cond`` (when that is not 0), or sigma < ``s_min_uncond`` on odd
steps (every step with ``opts.s_min_uncond_all``). ``sdxl`` conds are dicts of tensors.
"""
import torch

from modules import shared


def _cat(a, b):
    return {k: torch.cat([a[k], b[k]]) for k in a} if isinstance(a, dict) else torch.cat([a, b])


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.sampler = sampler
        self.p = None
        self.step = 0
        self.steps = None
        self.total_steps = None

    @property
    def inner_model(self):
        raise NotImplementedError()

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        batch = x.shape[0]
        skip_uncond = False
        if shared.opts.skip_early_cond != 0. and self.step / self.total_steps <= shared.opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
        elif (self.step % 2 or shared.opts.s_min_uncond_all) and s_min_uncond and s_min_uncond > 0 \
                and sigma[0] < s_min_uncond:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
        if skip_uncond:
            denoised_cond = self.inner_model(x, sigma, cond=cond)
            denoised_uncond, cond_scale = denoised_cond, 1.0
        else:
            x_out = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=_cat(cond, uncond))
            denoised_cond, denoised_uncond = x_out[:batch], x_out[batch:]
        self.step += 1
        return denoised_uncond + (denoised_cond - denoised_uncond) * cond_scale
