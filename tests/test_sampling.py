"""The TLCM step itself: prediction types, the eta blend, and its contract with hosts."""
import pytest
import torch

from tlcm.sampling import renoise, sample_tlcm, split_model_output, tlcm_step


@pytest.fixture
def vp():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a = torch.tensor(0.2776695)                      # ᾱ at t = 499
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    return x0, eps, a, z, v


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_recovers_x0_and_eps(vp, kind):
    x0, eps, a, z, v = vp
    output = {"epsilon": eps, "v_prediction": v, "sample": x0}[kind]
    got_x0, got_eps = split_model_output(output, z, a, kind)
    torch.testing.assert_close(got_x0, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_eps, eps, rtol=1e-5, atol=1e-5)


def test_unknown_prediction_type(vp):
    x0, eps, a, z, v = vp
    with pytest.raises(ValueError, match="prediction_type"):
        split_model_output(eps, z, a, "flow")


def test_step_renoises_with_fresh_noise_or_jumps_deterministically(vp):
    x0, eps, a, z, v = vp
    a_next = torch.tensor(0.8634073)
    xi = torch.randn_like(x0)
    official, _ = tlcm_step(eps, z, a, a_next, xi, eta=1.0)
    torch.testing.assert_close(official, a_next.sqrt() * x0 + (1 - a_next).sqrt() * xi, rtol=1e-5, atol=1e-5)
    ddim, _ = tlcm_step(eps, z, a, a_next, None, eta=0.0)
    torch.testing.assert_close(ddim, a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps, rtol=1e-5, atol=1e-5)
    last, denoised = tlcm_step(eps, z, a, None, None)
    torch.testing.assert_close(last, x0, rtol=1e-5, atol=1e-5)
    assert last is denoised


def test_eta_blend_keeps_unit_variance():
    torch.manual_seed(0)
    eps, xi = torch.randn(200_000), torch.randn(200_000)
    out = renoise(torch.zeros(1), eps, 1.0, xi, eta=0.6)
    assert out.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.corrcoef(torch.stack([out, eps]))[0, 1].item() == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_eta_out_of_range(eta):
    with pytest.raises(ValueError, match="eta"):
        renoise(torch.zeros(1), torch.zeros(1), 1.0, torch.zeros(1), eta=eta)


def test_missing_inputs_for_the_requested_eta():
    with pytest.raises(ValueError, match="noise is required"):
        renoise(torch.zeros(1), torch.zeros(1), 1.0, None, eta=0.5)
    with pytest.raises(ValueError, match="eps is required"):
        renoise(torch.zeros(1), None, 1.0, torch.zeros(1), eta=0.5)


def test_k_diffusion_contract():
    """Model called once per sigma with a batch of sigmas; callback each step; noise drawn N-1 times."""
    calls, seen, draws = [], [], []
    sigmas = torch.tensor([14.6147, 1.6129, 0.3977, 0.0])
    x = torch.randn(3, 4, 2, 2)

    def model(x, sigma, cond=None):
        calls.append((sigma.clone(), cond))
        return torch.zeros_like(x)

    def noise_sampler(s, s_next):
        draws.append((float(s), float(s_next)))
        return torch.ones_like(x)

    out = sample_tlcm(model, x, sigmas, extra_args={"cond": "c"}, callback=lambda d: seen.append(d["i"]),
                      disable=True, noise_sampler=noise_sampler)
    assert [c[0].tolist() for c in calls] == [[s] * 3 for s in sigmas[:-1].tolist()]
    assert all(c[1] == "c" for c in calls)
    assert seen == [0, 1, 2]
    assert len(draws) == 2
    assert torch.equal(out, torch.zeros_like(x))        # the last x̂0
