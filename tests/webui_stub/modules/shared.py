"""``modules.shared``: ``opts`` (settings with A1111 1.10 defaults for the keys used), ``cmd_opts``, ``sd_model``."""
from types import SimpleNamespace

import torch

device = torch.device("cpu")


class Options:
    """A1111's ``shared.opts`` shape: values the user changed in ``data``, the rest from ``data_labels``' defaults
    (reading an attribute looks in ``data`` first, then the default; writing one goes into ``data``)."""

    def __init__(self, defaults: dict):
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {k: SimpleNamespace(default=v) for k, v in defaults.items()})

    def __getattr__(self, key):
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key, value):
        self.data[key] = value


opts = Options(dict(
    hide_samplers=[], sgm_noise_multiplier=False, always_discard_next_to_last_sigma=False,
    use_old_karras_scheduler_sigmas=False, sigma_min=0.0, sigma_max=0.0, rho=0.0, eta_ancestral=1.0,
    eta_noise_seed_delta=0, img2img_fix_steps=False, img2img_extra_noise=0.0, enable_quantization=False,
    skip_early_cond=0.0, s_min_uncond_all=False, sd_noise_schedule="Default",
))
cmd_opts = SimpleNamespace(lora_dir=None)
sd_model = None
"""Set by tests: an object with ``alphas_cumprod`` and ``apply_model(x, t, cond)`` (an LDM/sgm model)."""
