"""Tests that kill mutants of ``tlcm/scheduler.py`` the older tests let live (bench/results/mutation.md).

Every expectation is written out by hand, never computed by ``tlcm``. Most tests use a 4-timestep schedule
whose ᾱ have exact square roots: ᾱ = 0.9216, 0.64, 0.36, 0.0784 at t = 0..3, so √ᾱ / √(1 − ᾱ) is
0.96 / 0.28, 0.8 / 0.6, 0.6 / 0.8 and 0.28 / 0.96.
"""
import pytest
import torch

from tlcm.errors import NonFiniteError
from tlcm.scheduler import TLCMScheduler

# β_t = 1 − ᾱ_t / ᾱ_{t−1} for the ᾱ above
BETAS = [0.0784, 1 - 0.64 / 0.9216, 1 - 0.36 / 0.64, 1 - 0.0784 / 0.36]


def small(**config) -> TLCMScheduler:
    scheduler = TLCMScheduler(num_train_timesteps=4, trained_betas=BETAS, **config)
    scheduler.set_timesteps(timesteps=[3, 1])
    return scheduler


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "pass exactly one of num_inference_steps or timesteps"),
    ({"timesteps": []}, "timesteps must be a non-empty list in [0, 999], got []"),
    ({"timesteps": [1000, 499]}, "timesteps must be a non-empty list in [0, 999], got [1000, 499]"),
    ({"timesteps": [499, -1]}, "timesteps must be a non-empty list in [0, 999], got [499, -1]"),
    ({"timesteps": [999, 499, 499]}, "timesteps must be strictly decreasing, got [999, 499, 499]"),
])
def test_set_timesteps_refuses_with_the_exact_message(kwargs, message):
    with pytest.raises(ValueError) as err:
        TLCMScheduler().set_timesteps(**kwargs)
    assert str(err.value) == message


def test_explicit_timesteps_may_end_at_zero():
    scheduler = TLCMScheduler()
    scheduler.set_timesteps(timesteps=[999, 0])
    assert scheduler.timesteps.tolist() == [999, 0] and scheduler.num_inference_steps == 2


@pytest.mark.parametrize("config, steps, expected", [
    ({"schedule": "uniform"}, 4, [999, 749, 499, 249]),           # the paper's grid, not the table's 124
    ({"num_segments": 4}, 2, [999, 249]),                         # M = 4 grid 999, 749, 499, 249: first and last
    ({"num_train_timesteps": 500}, 4, [499, 374, 249, 62]),       # int(499 − 499·i/8) at i = 0, 2, 4, 7
])
def test_set_timesteps_passes_the_config_on(config, steps, expected):
    scheduler = TLCMScheduler(**config)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == expected


def test_timesteps_go_to_the_requested_device():
    scheduler = TLCMScheduler()
    scheduler.set_timesteps(4, device="meta")          # any device other than the default CPU
    assert scheduler.timesteps.device.type == "meta" and scheduler.timesteps.dtype == torch.long


def test_step_before_set_timesteps_message():
    with pytest.raises(ValueError) as err:
        TLCMScheduler().step(t(0.0), 999, t(1.0))
    assert str(err.value) == "call set_timesteps before step"


def test_step_called_once_too_often_message():
    scheduler = small(eta=0.0)
    sample = t(1.0)
    for timestep in (3, 1):
        sample = scheduler.step(t(0.0), timestep, sample).prev_sample
    with pytest.raises(ValueError) as err:
        scheduler.step(t(0.0), 1, sample)
    assert str(err.value) == "step called 3 times for 2 timesteps"


def test_begin_index_defaults_to_zero_and_wins_over_the_timestep_argument():
    scheduler = small()
    scheduler.set_begin_index()
    assert scheduler.begin_index == 0
    scheduler.set_begin_index(1)
    assert scheduler.begin_index == 1
    out = scheduler.step(t(0.5), 3, t(1.0))             # starts at index 1 (t = 1, ᾱ = 0.64), the last step
    assert scheduler.step_index == 2
    assert out.denoised.tolist() == pytest.approx([0.875], abs=1e-6)       # (1 − 0.6·0.5) / 0.8
    assert out.prev_sample.tolist() == pytest.approx([0.875], abs=1e-6)


def test_step_returns_next_sample_and_x0_deterministic_jump():
    scheduler = small(eta=0.0)
    out = scheduler.step(t(0.5), 3, t(1.0))
    # x̂0 = (1 − 0.96·0.5) / 0.28 = 1.857142857; DDIM jump to ᾱ = 0.64: 0.8·x̂0 + 0.6·0.5 = 1.785714286
    assert out.denoised.tolist() == pytest.approx([1.857142857], abs=1e-6)
    assert out.prev_sample.tolist() == pytest.approx([1.785714286], abs=1e-6)
    prev, denoised = scheduler.step(t(0.25), 1, out.prev_sample, return_dict=False)
    # last step: x̂0 = (1.785714286 − 0.6·0.25) / 0.8 = 2.044642857, returned as the sample too
    assert denoised.tolist() == pytest.approx([2.044642857], abs=1e-6)
    assert prev.tolist() == pytest.approx([2.044642857], abs=1e-6)


@pytest.mark.parametrize("prediction_type, x0", [
    ("v_prediction", -0.2),                  # √ᾱ·z − √(1−ᾱ)·v = 0.28·1 − 0.96·0.5
    ("sample", 0.5),                         # the output is x̂0
])
def test_step_uses_the_configured_prediction_type(prediction_type, x0):
    out = small(prediction_type=prediction_type, eta=0.0).step(t(0.5), 3, t(1.0))
    assert out.denoised.tolist() == pytest.approx([x0], abs=1e-6)


def test_float64_samples_are_stepped_in_float64():
    """ᾱ is stored in float32 and cast to the sample's dtype before any arithmetic: with ᾱ₃ = float32(0.0784)
    = 0.07840000092983246 and ᾱ₁ = float32(0.64) = 0.6399999856948853, a float64 step gives these to 1e-15
    (a square root taken in float32 is off by ~1e-9)."""
    scheduler = small(eta=0.0)
    z = torch.tensor([1.0], dtype=torch.float64)
    out = scheduler.step(torch.zeros(1, dtype=torch.float64), 3, z)
    assert out.denoised.dtype == out.prev_sample.dtype == torch.float64
    assert out.denoised.item() == pytest.approx(3.5714285502498075, rel=1e-13, abs=0)      # 1 / √ᾱ₃
    assert out.prev_sample.item() == pytest.approx(2.857142808268786, rel=1e-13, abs=0)    # √ᾱ₁ / √ᾱ₃


def test_fresh_noise_is_one_draw_per_renoise_and_none_at_the_last_step():
    scheduler = small()                                                   # eta = 1
    generator, reference = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out = scheduler.step(t(0.5), 3, t(1.0), generator=generator)
    n = torch.randn(1, generator=reference)                               # the one draw
    # eta 1 re-noises x̂0 to ᾱ = 0.64 with fresh noise: 0.8·(x̂0 + 0.75·n) = 0.8·1.857142857 + 0.6·n
    torch.testing.assert_close(out.prev_sample, 1.4857142857 + 0.6 * n, rtol=0, atol=1e-6)
    scheduler.step(t(0.25), 1, out.prev_sample, generator=generator)     # last step: no draw
    assert torch.equal(generator.get_state(), reference.get_state())


def test_eta_zero_draws_no_noise():
    scheduler = small(eta=0.0)
    generator = torch.Generator().manual_seed(7)
    before = generator.get_state()
    sample = scheduler.step(t(0.5), 3, t(1.0), generator=generator).prev_sample
    scheduler.step(t(0.25), 1, sample, generator=generator)
    assert torch.equal(generator.get_state(), before)


def test_half_precision_stays_half_precision():
    scheduler = small()
    bf16 = torch.bfloat16
    out = scheduler.step(t(0.5, dtype=bf16), 3, t(1.0, dtype=bf16), generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == out.denoised.dtype == bf16
    noised = scheduler.add_noise(t(1.0, dtype=bf16), t(0.0, dtype=bf16), torch.tensor([1]))
    assert noised.dtype == bf16


def test_add_noise_in_float64():
    scheduler = small()
    x0, noise = torch.tensor([[1.0], [0.0]], dtype=torch.float64), torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    noised = scheduler.add_noise(x0, noise, torch.tensor([3, 3]))
    # √ᾱ₃ and √(1 − ᾱ₃) in float64 of ᾱ₃ = float32(0.0784) = 0.07840000092983246
    assert noised[:, 0].tolist() == pytest.approx([0.2800000016604151, 0.9599999995157122], rel=1e-13, abs=0)


def test_non_finite_step_message_carries_the_hint():
    scheduler = small()
    with pytest.raises(NonFiniteError) as err:
        scheduler.step(t(float("inf")), 3, t(1.0), generator=torch.Generator().manual_seed(0))
    assert str(err.value) == (
        "the latent after TLCM step 1 of 2 holds NaN or Inf values: the model produced NaN/Inf, so the image would "
        "be black: run in bfloat16 or float32 rather than float16, lower the LoRA strength, or check the model and "
        "LoRA files")


@pytest.mark.optional_layer
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (ᾱ, noise and indices follow devices)")
def test_step_and_add_noise_follow_the_devices():
    scheduler = TLCMScheduler(num_train_timesteps=4, trained_betas=BETAS)
    scheduler.set_timesteps(timesteps=[3, 1], device="cuda")
    sample = torch.ones(1, device="cuda")
    out = scheduler.step(torch.full_like(sample, 0.5), 3, sample, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.device.type == "cuda"
    # CUDA samples with CPU timesteps, and CPU samples with CUDA timesteps
    x0 = torch.ones(1, 1, device="cuda")
    assert scheduler.add_noise(x0, torch.zeros_like(x0), torch.tensor([3])).device.type == "cuda"
    cpu = torch.ones(1, 1)
    noised = scheduler.add_noise(cpu, torch.zeros_like(cpu), torch.tensor([3], device="cuda"))
    assert noised.device.type == "cpu" and noised.item() == pytest.approx(0.28, abs=1e-6)
