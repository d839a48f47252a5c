"""Tests that kill mutants of ``tlcm/schedules.py`` the older tests let live (bench/results/mutation.md).

Every expectation is written out (hand arithmetic or the official tables), never computed by ``tlcm``.
"""
import math

import pytest
import torch

from tlcm.schedules import (alphas_cumprod_from_config, check_step_count, make_alphas_cumprod, milestone_grid,
                            schedule_timesteps, timesteps_to_sigmas, tlcm_sigmas, tlcm_timesteps, uniform_timesteps)

# σ_t = √((1 − ᾱ_t)/ᾱ_t) of SDXL's schedule at the official milestones (tests/test_schedules.py's table)
SIGMA = {999: 14.6147, 749: 4.0817, 499: 1.6129, 374: 1.0690, 249: 0.6932, 124: 0.3977}
ALPHA_BAR_SDXL = {999: 0.0046601, 499: 0.2776695, 0: 0.99915}


def test_step_count_error_names_the_field_and_the_range():
    with pytest.raises(ValueError) as err:
        check_step_count(9)
    assert str(err.value) == "steps must be 1-8 (the official TLCM milestone table; 4 is the paper's default), got 9"


def test_trained_betas_are_used_as_given_in_float64():
    ac = make_alphas_cumprod(trained_betas=[0.1, 0.2, 0.5])
    assert ac.dtype == torch.float64
    assert ac.tolist() == pytest.approx([0.9, 0.72, 0.36], abs=1e-15)


def test_linear_beta_schedule():
    ac = make_alphas_cumprod(4, 0.1, 0.4, "linear")          # betas 0.1, 0.2, 0.3, 0.4
    assert ac.dtype == torch.float64
    assert ac.tolist() == pytest.approx([0.9, 0.72, 0.504, 0.3024], abs=1e-15)


def test_scaled_linear_is_float64_and_squares_a_sqrt_ramp():
    assert make_alphas_cumprod().dtype == torch.float64
    ac = make_alphas_cumprod(2, 0.01, 0.04)                   # √β from 0.1 to 0.2 -> betas 0.01, 0.04
    assert ac.dtype == torch.float64
    assert ac.tolist() == pytest.approx([0.99, 0.9504], abs=1e-15)


def test_unknown_beta_schedule_message():
    with pytest.raises(ValueError) as err:
        make_alphas_cumprod(beta_schedule="cosine")
    assert str(err.value) == "beta_schedule must be one of scaled_linear, linear (or pass trained_betas), got 'cosine'"


def test_alphas_cumprod_from_config_reads_every_key():
    linear = alphas_cumprod_from_config({"num_train_timesteps": 4, "beta_start": 0.1, "beta_end": 0.4,
                                         "beta_schedule": "linear"})
    assert linear.dtype == torch.float64
    assert linear.tolist() == pytest.approx([0.9, 0.72, 0.504, 0.3024], abs=1e-15)
    trained = alphas_cumprod_from_config({"trained_betas": [0.1, 0.2, 0.5], "beta_schedule": "linear"})
    assert trained.tolist() == pytest.approx([0.9, 0.72, 0.36], abs=1e-15)


def test_alphas_cumprod_from_an_empty_config_is_sdxl():
    ac = alphas_cumprod_from_config({})
    assert ac.dtype == torch.float64 and ac.numel() == 1000
    for t, value in ALPHA_BAR_SDXL.items():
        assert float(ac[t]) == pytest.approx(value, rel=2e-5)
    # only the keys it is given change: SDXL's scaled_linear betas over 10 steps
    short = alphas_cumprod_from_config({"num_train_timesteps": 10})
    assert short.numel() == 10 and float(short[0]) == pytest.approx(0.99915, abs=1e-12)


@pytest.mark.parametrize("bad", [True, 2.5])
def test_grid_rejects_bools_and_floats(bad):
    with pytest.raises(ValueError, match="num_segments must be an integer >= 1"):
        milestone_grid(bad)


def test_grid_needs_fewer_segments_than_timesteps():
    assert milestone_grid(9, 10) == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError) as err:
        milestone_grid(10, 10)
    assert str(err.value) == "num_segments (10) must be smaller than num_train_timesteps (10)"


def test_unknown_schedule_message():
    with pytest.raises(ValueError) as err:
        schedule_timesteps(4, "karras")
    assert str(err.value) == "unknown schedule 'karras'; choose one of tlcm, uniform"


@pytest.mark.parametrize("bad", ["0.5", None, float("nan"), 0.0, 1.5])
def test_denoise_must_be_a_number_in_range(bad):
    with pytest.raises(ValueError, match="denoise must be in"):
        schedule_timesteps(4, denoise=bad)


def test_schedule_timesteps_passes_grid_size_and_train_length_on():
    assert schedule_timesteps(3, num_segments=5) == [999, 599, 199]
    assert schedule_timesteps(2, num_train_timesteps=100) == [99, 49]              # M = 8 over 0..99, (0, 4)
    assert schedule_timesteps(4, "uniform", num_train_timesteps=100) == [99, 74, 49, 24]


def test_tlcm_timesteps_with_a_short_training_schedule():
    assert tlcm_timesteps(2, num_train_timesteps=100) == [99, 49]
    # N > M: the 10-segment grid of 0..99, int(99 - 9.9 i)
    assert tlcm_timesteps(10, num_train_timesteps=100) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]


def test_one_step_on_another_grid_is_the_first_milestone():
    assert tlcm_timesteps(1, num_segments=4) == [999]
    assert tlcm_timesteps(1, num_segments=16) == [999]


def test_uniform_may_use_every_training_timestep():
    assert uniform_timesteps(10, num_train_timesteps=10) == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    with pytest.raises(ValueError) as err:
        uniform_timesteps(11, num_train_timesteps=10)
    assert str(err.value) == "steps (11) cannot exceed num_train_timesteps (10)"


def test_sigmas_are_computed_in_float64():
    # ᾱ = 1 − 1e-10 is 1.0 in float32 (σ would be 0); in float64 σ = √(1e-10 / (1 − 1e-10)) ≈ 1e-5
    sigmas = timesteps_to_sigmas([0], [1.0 - 1e-10])
    assert sigmas.dtype == torch.float32
    assert float(sigmas[0]) == pytest.approx(1e-5, rel=1e-4) and float(sigmas[1]) == 0.0
    sigmas = timesteps_to_sigmas([0], torch.tensor([1.0 - 1e-10], dtype=torch.float64))
    assert float(sigmas[0]) == pytest.approx(1e-5, rel=1e-4)


def test_timestep_zero_is_allowed():
    sigmas = timesteps_to_sigmas([0])
    assert float(sigmas[0]) == pytest.approx(math.sqrt(0.00085 / 0.99915), rel=1e-6)     # ᾱ_0 = 1 − β_0


def test_sigma_errors():
    with pytest.raises(ValueError) as err:
        timesteps_to_sigmas([])
    assert str(err.value) == "timesteps must not be empty"
    for bad in ([1000], [-1]):
        with pytest.raises(ValueError) as err:
            timesteps_to_sigmas(bad)
        assert str(err.value) == f"timesteps must lie in [0, 999], got {bad}"


def test_tlcm_sigmas_passes_every_option_on():
    expected = {("uniform", 1.0): [14.6147, 4.0817, 1.6129, 0.6932], ("tlcm", 0.5): [1.6129, 1.0690, 0.6932, 0.3977]}
    for (schedule, denoise), values in expected.items():
        sigmas = tlcm_sigmas(4, schedule, denoise=denoise)
        torch.testing.assert_close(sigmas, torch.tensor(values + [0.0]), atol=2e-4, rtol=0)
    # M = 4: grid 999, 749, 499, 249, 0; 2 steps spread to indices 0 and 3
    torch.testing.assert_close(tlcm_sigmas(2, num_segments=4), torch.tensor([SIGMA[999], SIGMA[249], 0.0]),
                               atol=2e-4, rtol=0)


def test_tlcm_sigmas_uses_the_given_alphas_and_their_length():
    ac = torch.full((100,), 0.5, dtype=torch.float64)
    ac[99], ac[49] = 0.2, 0.8                                    # 2 steps over 0..99 visit t = 99, 49
    torch.testing.assert_close(tlcm_sigmas(2, alphas_cumprod=ac), torch.tensor([2.0, 0.5, 0.0]))
