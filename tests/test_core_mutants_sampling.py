"""Tests that kill mutants of ``tlcm/sampling.py`` the older tests let live (bench/results/mutation.md).

Every expectation is written out by hand (ᾱ = 0.64: √ᾱ = 0.8, √(1 − ᾱ) = 0.6), never computed by ``tlcm``.
"""
import pytest
import torch

from tlcm.sampling import default_noise_sampler, renoise, split_model_output, tlcm_step

A_T = torch.tensor(0.64, dtype=torch.float64)
SAMPLE = torch.tensor([1.0], dtype=torch.float64)


def test_default_prediction_type_is_epsilon():
    x0, eps = split_model_output(torch.tensor([0.5], dtype=torch.float64), SAMPLE, A_T)
    assert x0.tolist() == pytest.approx([0.875])          # (1 − 0.6·0.5) / 0.8
    assert eps.tolist() == pytest.approx([0.5])


def test_unknown_prediction_type_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        split_model_output(SAMPLE, SAMPLE, A_T, "flow")
    assert str(err.value) == "prediction_type must be one of epsilon, v_prediction, sample, got 'flow'"


def test_step_defaults_to_the_official_fresh_noise():
    eps, noise, a_next = torch.tensor([0.5], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64), \
        torch.tensor(0.8, dtype=torch.float64)
    nxt, x0 = tlcm_step(eps, SAMPLE, A_T, a_next, noise)
    # x̂0 = 0.875; σ_next = √(0.2 / 0.8) = 0.5; √0.8 · (0.875 + 0.5 · 2) = 1.6770509831
    assert x0.tolist() == pytest.approx([0.875])
    assert nxt.tolist() == pytest.approx([1.6770509831], abs=1e-9)


def test_step_passes_the_prediction_type_on():
    nxt, x0 = tlcm_step(torch.tensor([0.3], dtype=torch.float64), SAMPLE, A_T, None, None, prediction_type="sample")
    assert x0.tolist() == pytest.approx([0.3]) and nxt.tolist() == pytest.approx([0.3])
    _, x0 = tlcm_step(torch.tensor([0.3], dtype=torch.float64), SAMPLE, A_T, None, None,
                      prediction_type="v_prediction")
    assert x0.tolist() == pytest.approx([0.62])           # 0.8 · 1 − 0.6 · 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_noise_sampler_is_seeded_shaped_and_typed_like_x(dtype):
    x = torch.zeros(2, 3, dtype=dtype)
    noise = default_noise_sampler(x, torch.Generator().manual_seed(0))(torch.tensor(1.0), torch.tensor(0.5))
    assert noise.shape == (2, 3) and noise.dtype == dtype and noise.device == x.device
    # torch.randn at seed 0 on the CPU (same values in float32 and float64)
    expected = [[1.5410, -0.2934, -2.1788], [0.5684, -1.0845, -1.3986]]
    torch.testing.assert_close(noise, torch.tensor(expected, dtype=dtype), atol=1e-4, rtol=0)


def test_renoise_defaults_to_fresh_noise():
    x0, noise = torch.tensor([0.875], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    assert renoise(x0, None, 0.5, noise).tolist() == pytest.approx([1.875])      # 0.875 + 0.5 · 2


@pytest.mark.parametrize("eps, noise, eta, message", [
    (None, SAMPLE, 0.5, "eps is required when eta < 1"),
    (SAMPLE, None, 0.5, "noise is required when eta > 0"),
])
def test_renoise_says_which_input_is_missing(eps, noise, eta, message):
    with pytest.raises(ValueError) as err:
        renoise(SAMPLE, eps, 0.5, noise, eta)
    assert str(err.value) == message


@pytest.mark.optional_layer
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (noise must follow x's device)")
def test_default_noise_sampler_follows_x_to_the_gpu():
    x = torch.zeros(2, 3, device="cuda")
    noise = default_noise_sampler(x, torch.Generator(device="cuda").manual_seed(0))(x[0, 0], x[0, 0])
    assert noise.device == x.device and noise.dtype == x.dtype and noise.shape == (2, 3)
