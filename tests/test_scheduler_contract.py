"""``TLCMScheduler`` against the rest of the diffusers scheduler contract, and zero-terminal-SNR models.

References are diffusers' own schedulers (DDPM/DDIM: betas, ᾱ with ``rescale_betas_zero_snr``), and the
zero-SNR x̂0 rule is written out (v-prediction at ᾱ = 0: x̂0 = √ᾱ·z − √(1−ᾱ)·v = −v).
"""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from reference_tlcm import README_TABLE
from tlcm.scheduler import TLCMScheduler

SDXL = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def test_betas_match_diffusers_and_previous_timestep_walks_the_milestones():
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    ours = TLCMScheduler.from_config(ddpm.config)
    torch.testing.assert_close(ours.betas, ddpm.betas, rtol=0, atol=2e-6)
    torch.testing.assert_close(TLCMScheduler(**SDXL).betas, DDPMScheduler(**SDXL).betas, rtol=0, atol=2e-6)
    ours.set_timesteps(4)
    assert [int(ours.previous_timestep(t)) for t in README_TABLE[4]] == [*README_TABLE[4][1:], -1]
    assert {"DDIMScheduler", "EulerDiscreteScheduler"} <= {c.__name__ for c in ours.compatibles}


def test_zero_terminal_snr_is_honoured_from_the_config():
    ddim = DDIMScheduler(**SDXL, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    ours = TLCMScheduler.from_config(ddim.config)
    assert ours.config.rescale_betas_zero_snr is True and ours.config.prediction_type == "v_prediction"
    torch.testing.assert_close(ours.alphas_cumprod, ddim.alphas_cumprod, rtol=0, atol=1e-6)
    assert float(ours.alphas_cumprod[-1]) == 0.0 and float(ours.alphas_cumprod[0]) == pytest.approx(
        float(TLCMScheduler(**SDXL).alphas_cumprod[0]), rel=1e-6)
    assert float(TLCMScheduler.from_config(DDIMScheduler(**SDXL).config).alphas_cumprod[-1]) > 0.004   # unchanged


def test_v_prediction_at_zero_snr_takes_x0_as_minus_v_and_epsilon_is_refused():
    ours = TLCMScheduler(**SDXL, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    ours.set_timesteps(2)
    assert ours.timesteps.tolist() == README_TABLE[2]                   # 999 first: ᾱ = 0 there
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    out = ours.step(v, 999, z, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.denoised, -v, rtol=0, atol=1e-6)
    a = ours.alphas_cumprod[README_TABLE[2][1]]
    xi = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.prev_sample, a.sqrt() * -v + (1 - a).sqrt() * xi, rtol=1e-5, atol=1e-5)

    eps = TLCMScheduler(**SDXL, rescale_betas_zero_snr=True)
    eps.set_timesteps(2)
    with pytest.raises(ValueError, match="ᾱ = 0 .*need a v-prediction model"):
        eps.step(v, 999, z)
