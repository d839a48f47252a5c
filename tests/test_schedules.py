"""Exact step tables of the official TLCM inference script, and the documented rules beyond them."""
import pytest
import torch

from tlcm.schedules import (OFFICIAL_STEP_INDICES, make_alphas_cumprod, milestone_grid, schedule_timesteps,
                            timesteps_to_sigmas, tlcm_sigmas, tlcm_timesteps, uniform_timesteps)

# docs/method.md §1.4 (the milestone table), from OPPO-Mente-Lab/TLCM inference.py
OFFICIAL_T = {
    1: [999], 2: [999, 499], 3: [999, 499, 124], 4: [999, 749, 499, 124],
    5: [999, 749, 499, 249, 124], 6: [999, 749, 499, 374, 249, 124],
    7: [999, 749, 624, 499, 374, 249, 124], 8: [999, 874, 749, 624, 499, 374, 249, 124],
}
OFFICIAL_SIGMA = {999: 14.6147, 874: 7.2974, 749: 4.0817, 624: 2.4925, 499: 1.6129, 374: 1.0690,
                  249: 0.6932, 124: 0.3977}
ALPHA_BAR = dict(zip([999, 874, 749, 624, 499, 374, 249, 124, 0],
                     [0.0046601, 0.0184327, 0.0566234, 0.1386441, 0.2776695, 0.4667100, 0.6754323, 0.8634073,
                      0.99915]))


def test_grid_matches_torch_integer_linspace():
    assert milestone_grid() == [999, 874, 749, 624, 499, 374, 249, 124, 0]
    for m in (1, 3, 5, 7, 8, 10, 13, 16, 999):
        assert milestone_grid(m) == torch.linspace(999, 0, m + 1, dtype=torch.int64).tolist()


@pytest.mark.parametrize("steps", range(1, 9))
def test_official_table(steps):
    assert tlcm_timesteps(steps) == OFFICIAL_T[steps]
    assert schedule_timesteps(steps) == OFFICIAL_T[steps]
    grid = milestone_grid()
    assert [grid[i] for i in OFFICIAL_STEP_INDICES[steps]] == OFFICIAL_T[steps]


@pytest.mark.parametrize("steps", range(1, 9))
def test_sigmas_match_table(steps):
    sigmas = tlcm_sigmas(steps)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0 and len(sigmas) == steps + 1
    expected = torch.tensor([OFFICIAL_SIGMA[t] for t in OFFICIAL_T[steps]])
    torch.testing.assert_close(sigmas[:-1], expected, atol=2e-4, rtol=0)


def test_sdxl_alphas_cumprod_constants():
    ac = make_alphas_cumprod()
    for t, value in ALPHA_BAR.items():
        assert float(ac[t]) == pytest.approx(value, rel=2e-5)


def test_uniform_schedule_is_the_paper_grid():
    assert uniform_timesteps(4) == [999, 749, 499, 249]
    assert uniform_timesteps(2) == [999, 499]
    assert uniform_timesteps(1) == [999]
    assert uniform_timesteps(3) == [999, 666, 332]     # diffusers "trailing"
    assert schedule_timesteps(4, "uniform") == [999, 749, 499, 249]


def test_more_steps_than_the_table_refine_the_grid():
    assert tlcm_timesteps(8) == milestone_grid(8)[:8]          # the rule agrees with the table at N = 8
    assert tlcm_timesteps(10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert tlcm_timesteps(13) == milestone_grid(13)[:13]


def test_partial_denoise_keeps_the_tail_of_the_longer_schedule():
    assert schedule_timesteps(4, denoise=0.5) == [499, 374, 249, 124]        # hires / img2img rule
    assert schedule_timesteps(2, denoise=0.5) == [499, 124]
    assert schedule_timesteps(4, denoise=0.3) == milestone_grid(13)[9:13]    # int(4 / 0.3) = 13
    assert schedule_timesteps(4, "uniform", denoise=0.5) == uniform_timesteps(8)[-4:]
    assert schedule_timesteps(3, denoise=1.0) == OFFICIAL_T[3]


def test_other_grid_sizes_spread_the_milestones():
    assert tlcm_timesteps(4, num_segments=4) == milestone_grid(4)[:4]
    assert tlcm_timesteps(3, num_segments=5) == [999, 599, 199]
    assert tlcm_timesteps(2, num_segments=16) == [999, 62]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True, None])
def test_bad_step_counts_are_value_errors(bad):
    with pytest.raises(ValueError, match="steps"):
        tlcm_timesteps(bad)
    with pytest.raises(ValueError, match="steps"):
        schedule_timesteps(bad)


@pytest.mark.parametrize("denoise", [0.0, -0.5, 1.5, float("nan")])
def test_bad_denoise(denoise):
    with pytest.raises(ValueError, match="denoise"):
        schedule_timesteps(4, denoise=denoise)


def test_bad_schedule_grid_and_timesteps():
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_timesteps(4, "karras")
    with pytest.raises(ValueError, match="num_segments"):
        milestone_grid(0)
    with pytest.raises(ValueError, match="timesteps must lie"):
        timesteps_to_sigmas([1000])
    with pytest.raises(ValueError, match="beta_schedule"):
        make_alphas_cumprod(beta_schedule="cosine")


def test_step_count_range_offered_by_every_ui():
    from tlcm.schedules import check_step_count
    assert [check_step_count(n) for n in (1, 4, 8, 6.0)] == [1, 4, 8, 6]
    for bad, message in ((0, "must be 1-8"), (9, "must be 1-8"), (4.5, "whole number"), (True, "whole number"),
                         ("4", "whole number")):
        with pytest.raises(ValueError, match=message):
            check_step_count(bad)
