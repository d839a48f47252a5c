"""Distribution matching on the tiny kit: the student gets exactly the DMD gradient (also with gradient
checkpointing), the fake score trains alone and starts as the base, and its state resumes exactly."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from technique_kit import (TARGETS, aux_batch, chain_rule, checkpointed, grads_via_aux, relative_error,
                           student_denoiser, weights)

from tlcm_train.adapters import adapter_state, require_student_active, student_parameters, teacher_mode
from tlcm_train.adversarial import Adversarial
from tlcm_train.consistency import randint, randn
from tlcm_train.diffusion import Denoiser
from tlcm_train.dmd import DistributionMatching
from tlcm_train.technique import AuxBatch

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores


def dmd_on(den: Denoiser, **kwargs) -> DistributionMatching:
    return DistributionMatching(den, rank=4, alpha=4, target_modules=TARGETS, **kwargs)


def x0_of(net: torch.nn.Module, den: Denoiser, z: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
          pooled: torch.Tensor, time_ids: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
    """x̂0 of an ε-prediction UNet; CFG with a zero unconditional embedding written out (cond and uncond in
    one call, as on the GPU: a different batch size changes float32 rounding, amplified by 1/√ᾱ at high t)."""
    n = 2 if guidance != 1.0 else 1
    out = net(torch.cat([z] * n), torch.cat([t] * n),
              encoder_hidden_states=torch.cat([embeds, torch.zeros_like(embeds)][:n]),
              added_cond_kwargs={"text_embeds": torch.cat([pooled, torch.zeros_like(pooled)][:n]),
                                 "time_ids": torch.cat([time_ids] * n)}, return_dict=False)[0]
    if n == 2:
        cond, uncond = out.chunk(2)
        out = uncond + guidance * (cond - uncond)
    a = den.alpha(t)
    return (z - (1 - a).sqrt() * out) / a.sqrt()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_student_gets_exactly_the_dmd_gradient(checkpointing):
    den = student_denoiser()
    dmd = dmd_on(den, weight=0.7, guidance_scale=3.0, t_min=100, t_max=900)
    with torch.no_grad():                           # a fake score that has moved away from the base
        for p in dmd.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if checkpointing:
        checkpointed(den)
    batch = aux_batch(den)
    got, values = grads_via_aux(den, batch, dmd.terms(batch))

    # reference: copies frozen in the real / fake states (no adapter switch), the formula written out
    base_net, fake_net = copy.deepcopy(den.unet), copy.deepcopy(den.unet)
    base_net.disable_adapters()
    fake_net.set_adapter("fake")
    g = torch.Generator().manual_seed(3)            # the batch generator's draws, in the same order
    x0 = batch.x0.detach()
    t = randint(100, 900, 2, g, x0.device)
    z = den.add_noise(x0, randn(tuple(x0.shape), g, x0), t)
    c = batch.cond
    with torch.no_grad():
        real = x0_of(base_net, den, z, t, c.embeds, c.pooled, c.time_ids, guidance=3.0)
        fake = x0_of(fake_net, den, z, t, c.embeds, c.pooled, c.time_ids)
    grad = ((x0 - real) - (x0 - fake)) / (x0 - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = chain_rule(den, batch, 0.7 * grad / grad.numel())   # d/dx0 of 0.5·mse(x0, sg(x0 − grad)) = grad / N

    assert relative_error(got, expected) <= 1e-5
    assert values["dmd"] == pytest.approx(0.5 * float(grad.square().mean()), rel=1e-5)
    assert float(grad.abs().mean()) > 0.01                   # real and fake really differ


def test_update_trains_only_the_fake_score_inside_its_state():
    den = checkpointed(student_denoiser())        # checkpointing: a backward outside the fake state would fail
    dmd = dmd_on(den, fake_updates=2, lr=1e-3)
    batch = aux_batch(den)
    before = weights(den.unet)
    out = dmd.update(batch)
    after = weights(den.unet)
    assert set(out) == {"dmd/fake_loss"} and out["dmd/fake_loss"] > 0
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".fake." in n for n in changed)
    assert any("lora_A.fake" in n for n in changed) and any("lora_B.fake" in n for n in changed)
    assert all(p.grad is None for p in den.unet.parameters())        # nothing left for the next backward
    require_student_active(den.unet)


def test_fake_score_starts_as_the_base_and_is_fp32():
    den = student_denoiser()
    dmd = dmd_on(den)
    batch = aux_batch(den)
    with torch.no_grad(), adapter_state(den.unet, "fake"):
        fake = den.predict(batch.z_t, batch.t, batch.cond)[0]
    with teacher_mode(den.unet):
        teacher = den.predict(batch.z_t, batch.t, batch.cond)[0]
    assert torch.equal(fake, teacher)
    fake_lora = [p for n, p in den.unet.named_parameters() if ".fake." in n]
    assert list(map(id, dmd.parameters())) == list(map(id, fake_lora))
    assert all(p.dtype == torch.float32 for p in fake_lora)
    assert len(fake_lora) == len(student_parameters(den.unet))          # same targets as the student here
    require_student_active(den.unet)


def test_state_resumes_exactly_and_refuses_a_mismatch():
    first = dmd_on(student_denoiser(), lr=1e-3)
    first.update(aux_batch(first.denoiser))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    second = dmd_on(student_denoiser(), lr=1e-3)
    second.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    outs = [d.update(aux_batch(d.denoiser, seed=5)) for d in (first, second)]
    assert outs[0] == outs[1]
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))

    with pytest.raises(ValueError, match="does not fit"):
        DistributionMatching(student_denoiser(), rank=2, alpha=2, target_modules=TARGETS).load_state_dict(state)
    with pytest.raises(ValueError, match="not a 'dmd' state"):
        dmd_on(student_denoiser()).load_state_dict(Adversarial(student_denoiser(), head_width=8).state_dict())


def test_fake_score_learns_from_the_rollout_by_default():
    """fake_data=rollout trains on ẑ0 exactly as one_step would on a batch whose x̂0 were ẑ0."""
    trained = {}
    for name, fake_data, on_rollout in (("rollout", "rollout", False), ("one_step_on_rollout", "one_step", True),
                                        ("one_step", "one_step", False)):
        den = student_denoiser()            # same seed: same UNet, student and batch every round
        batch = aux_batch(den)
        torch.manual_seed(5)
        dmd = dmd_on(den, lr=1e-2, fake_data=fake_data)
        x0 = batch.rollout if on_rollout else batch.x0
        dmd.update(AuxBatch(den, batch.cond, batch.prompts, batch.z_t, batch.t, x0, batch.generator, batch.rollout))
        trained[name] = torch.cat([p.detach().flatten() for p in dmd.parameters()])
    assert torch.equal(trained["rollout"], trained["one_step_on_rollout"])
    assert not torch.equal(trained["rollout"], trained["one_step"])
    without = AuxBatch(den, batch.cond, batch.prompts, batch.z_t, batch.t, batch.x0, torch.Generator())
    with pytest.raises(ValueError, match="needs the student rollout"):
        dmd_on(student_denoiser()).update(without)
    with pytest.raises(ValueError, match="fake_data must be one of"):
        DistributionMatching(student_denoiser(), fake_data="teacher")
