"""The written-out references of ``tests/reference_tlcm.py`` against the README's numbers (pure Python, fast).

Host tests compare against these references; this file checks that the references themselves say what the
README says, without going through ``tlcm`` either.
"""
import pytest
import torch

from reference_tlcm import (PARTIAL_DENOISE, README_SIGMAS, README_TABLE, SDXL_ALPHAS_CUMPROD, UNIFORM_TABLE,
                            full_schedule, linspace_grid, partial_denoise, reference_loop, seeded_normal,
                            sigmas_for)


def test_readme_table_is_the_official_subset_of_the_8_segment_grid():
    grid = linspace_grid(8)
    assert grid == [999, 874, 749, 624, 499, 374, 249, 124, 0]
    for steps, row in README_TABLE.items():
        assert len(row) == steps and set(row) <= set(grid[:-1]) and row == sorted(row, reverse=True)
        assert row[0] == 999 and (steps < 3 or row[-1] == 124)
    assert full_schedule(8) == grid[:8]          # the >8 rule continues the table


@pytest.mark.parametrize("n", [9, 10, 13, 16, 17, 26, 100])
def test_exact_grid_equals_torch_integer_linspace(n):
    assert linspace_grid(n) == torch.linspace(999, 0, n + 1, dtype=torch.float64).trunc().long().tolist()


def test_uniform_rule_reproduces_the_hand_table():
    for n, row in UNIFORM_TABLE.items():
        assert full_schedule(n, "uniform") == row


@pytest.mark.parametrize("key", sorted(PARTIAL_DENOISE))
def test_partial_denoise_rule_reproduces_the_hand_table(key):
    steps, denoise, schedule = key
    assert partial_denoise(steps, denoise, schedule) == PARTIAL_DENOISE[key]


def test_hand_table_tells_int_from_round():
    """Most entries are ratios whose `round` differs from `int`, and there the schedules differ too."""
    differ = [key for key in PARTIAL_DENOISE
              if full_schedule(round(key[0] / key[1]), key[2])[-key[0]:] != PARTIAL_DENOISE[key]]
    assert len(differ) >= 9, differ


def test_sdxl_alphas_and_readme_sigmas():
    assert float(SDXL_ALPHAS_CUMPROD[999]) == pytest.approx(0.0046601, rel=2e-5)
    assert float(SDXL_ALPHAS_CUMPROD[0]) == pytest.approx(0.99915, rel=1e-6)
    sigmas = sigmas_for(README_TABLE[8])
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
    torch.testing.assert_close(sigmas[:-1], torch.tensor([README_SIGMAS[t] for t in README_TABLE[8]]),
                               atol=6e-5, rtol=0)


def test_reference_loop_on_an_exact_model():
    """With ε̂ exact for a fixed x0, eta 0 returns x0 from any start and eta 1 re-noises with the draws."""
    g = torch.Generator().manual_seed(0)
    x0, xi = torch.randn(1, 4, 2, 2, generator=g), torch.randn(1, 4, 2, 2, generator=g)
    ac = SDXL_ALPHAS_CUMPROD

    def exact_eps(z, t):
        a = float(ac[t])
        return (z - a ** 0.5 * x0) / (1 - a) ** 0.5
    z = ac[999].sqrt().float() * x0 + (1 - ac[999]).sqrt().float() * xi
    trace = []
    torch.testing.assert_close(reference_loop(exact_eps, z, [999, 499, 124], eta=0.0, trace=trace), x0)
    assert len(trace) == 3
    draws = []
    source = seeded_normal(1, (1, 4, 2, 2))
    torch.testing.assert_close(reference_loop(exact_eps, z, [999, 499], eta=1.0,
                                              noise=lambda: draws.append(source()) or draws[-1]), x0)
    assert len(draws) == 1          # one fresh draw per re-noise, none after the last x̂0
    with pytest.raises(ValueError):
        reference_loop(exact_eps, z, [999], eta=0.5)
