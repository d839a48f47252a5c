"""``modules.sd_samplers_cfg_denoiser.CFGDenoiser``: cond and uncond in one batch, mixed by ``cond_scale``.

Like A1111 it evaluates the negative prompt even at CFG 1 (``sdxl`` conds are dicts of tensors).
"""
import torch


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
        x_out = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=_cat(cond, uncond))
        denoised_cond, denoised_uncond = x_out[:batch], x_out[batch:]
        self.step += 1
        return denoised_uncond + (denoised_cond - denoised_uncond) * cond_scale
