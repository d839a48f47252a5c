"""The adversarial technique on the tiny kit: the student gets exactly the generator-hinge gradient (also
with gradient checkpointing), a discriminator step trains only the heads, real samples are the teacher's
x̂0, and the state resumes exactly."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from technique_kit import (TARGETS, aux_batch, checkpointed, grads_via_aux, relative_error, student_denoiser,
                           weights)

from tlcm_train.adapters import require_student_active, student_parameters, teacher_mode
from tlcm_train.adversarial import Adversarial
from tlcm_train.consistency import randint, randn
from tlcm_train.diffusion import Denoiser
from tlcm_train.dmd import DistributionMatching
from tlcm_train.technique import AuxBatch

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores


def full_forward_features(net: torch.nn.Module, den: Denoiser, z: torch.Tensor, t: torch.Tensor, cond) -> list:
    """Down/mid block outputs recorded during a complete UNet forward (no early exit)."""
    features = []
    blocks = [*net.down_blocks, net.mid_block]
    handles = [b.register_forward_hook(lambda m, a, o: features.append(o[0] if isinstance(o, tuple) else o))
               for b in blocks]
    Denoiser(net, {}, z.device).model_output(z, t, cond)
    for h in handles:
        h.remove()
    return features


def lora_backbone(den: Denoiser, **kwargs) -> Adversarial:
    """A discriminator whose backbone LoRA (rank 2, alpha 3: scale 1.5) has random B, so that its state
    differs from the frozen base and its A gets gradients too."""
    adv = Adversarial(den, backbone="lora", backbone_rank=2, backbone_alpha=3, target_modules=TARGETS, **kwargs)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in den.unet.named_parameters():
            if ".disc." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return adv


def backbone_copy(adv: Adversarial) -> torch.nn.Module:
    """A copy of the shared UNet in the discriminator backbone's state, written out with PEFT's calls."""
    net = copy.deepcopy(adv.denoiser.unet)
    if adv.backbone_adapter is None:
        net.disable_adapters()
    else:
        net.set_adapter("disc")
    return net


@pytest.mark.parametrize("checkpointing, kind, backbone",
                         [(False, "standard", "frozen"), (True, "standard", "frozen"), (False, "hinge", "frozen"),
                          (True, "standard", "lora")])
def test_student_gets_exactly_the_generator_gradient(checkpointing, kind, backbone):
    den = student_denoiser()
    if backbone == "lora":
        adv = lora_backbone(den, weight=0.3, head_width=16, t_min=10, t_max=400, loss=kind)
    else:
        adv = Adversarial(den, weight=0.3, head_width=16, t_min=10, t_max=400, loss=kind)
    if checkpointing:
        checkpointed(den)
    batch = aux_batch(den)
    got, values = grads_via_aux(den, batch, adv.terms(batch))
    assert all(p.grad is None for p in adv.parameters())   # heads and backbone LoRA are trained by update() only

    # reference: one graph student → x0 → backbone copy (full forward) → heads, one gradient
    base_net = backbone_copy(adv)
    g = torch.Generator().manual_seed(3)
    t = randint(10, 400, 2, g, batch.x0.device)
    noise = randn(tuple(batch.x0.shape), g, batch.x0)
    x0 = den.predict(batch.z_t, batch.t, batch.cond)[0]
    features = full_forward_features(base_net, den, den.add_noise(x0, noise, t), t, batch.cond)
    assert [f.shape[1] for f in features] == [32, 64, 64, 64]       # the kit's block_out_channels + mid
    if kind == "standard":      # Eq. 13's generator term −log D(z̃0), D = σ(logit): −log σ(l) = log(1 + e^−l)
        loss = sum(torch.log1p(torch.exp(-head(f))).mean() for head, f in zip(adv.heads, features)) / len(features)
    else:                       # hinge generator: −mean logit
        loss = -sum(head(f).mean() for head, f in zip(adv.heads, features)) / len(features)
    expected = torch.autograd.grad(0.3 * loss, student_parameters(den.unet))

    assert relative_error(got, list(expected)) <= 1e-5
    assert values["gan"] == pytest.approx(float(loss.detach()), rel=1e-5)
    require_student_active(den.unet)


def _assert_one_discriminator_step(adv: Adversarial, batch: AuxBatch, real: torch.Tensor) -> None:
    """``adv.update(batch)`` against the step written out on copies: real and fake (the student's x̂0) re-noised
    with the same (t', noise) through the backbone's full forward (frozen base, or base + its LoRA), D = mean
    over heads and patches, the standard log losses (−log σ(real) − log(1 − σ(fake))) or the hinge losses,
    then one AdamW step from a fresh state on the heads and, for a LoRA backbone, on that LoRA."""
    den, lr = adv.denoiser, adv.optimizer.defaults["lr"]
    heads, base_net = copy.deepcopy(adv.heads), backbone_copy(adv)
    trained = dict(heads.named_parameters())
    if adv.backbone_adapter is not None:
        trained.update({n: p for n, p in base_net.named_parameters() if ".disc." in n})
    g = torch.Generator()
    g.set_state(batch.generator.get_state())
    fake = batch.x0.detach()
    t = randint(adv.t_min, adv.t_max, 2, g, fake.device)
    noise = randn(tuple(fake.shape), g, fake)
    feats = [full_forward_features(base_net, den, den.add_noise(x, noise, t), t, batch.cond) for x in (real, fake)]
    pairs = [(head(r), head(f)) for head, r, f in zip(heads, *feats)]
    if adv.loss == "standard":
        d_loss = sum(-torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean()
                     for r, f in pairs) / len(pairs)
    else:
        d_loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in pairs) / len(pairs)
    d_loss.backward()
    decay = adv.optimizer.defaults["weight_decay"]      # AdamW's first step: p·(1 − lr·wd) − lr·g / (|g| + ε)
    stepped = {n: (p.detach() * (1 - lr * decay) - lr * p.grad / (p.grad.abs() + 1e-8), p.grad.abs() > 1e-6)
               for n, p in trained.items()}   # |g| <= 1e-6: float noise (a bias right before GroupNorm)

    out = adv.update(batch)
    assert out["gan/d_loss"] == pytest.approx(float(d_loss.detach()), rel=1e-5)
    assert out["gan/d_real"] == pytest.approx(float(sum(r.mean() for r, _ in pairs).detach()) / len(pairs), rel=1e-5)
    assert out["gan/d_fake"] == pytest.approx(float(sum(f.mean() for _, f in pairs).detach()) / len(pairs), rel=1e-5)
    moved, now = 0, adv.state_dict()["weights"]
    assert set(now) == set(stepped)
    for name, (value, clear) in stepped.items():
        got = now[name]
        assert float(torch.where(clear, got - value, 0).abs().max()) <= 1e-3 * lr, name
        assert float((got - value).abs().max()) <= 2 * lr, name
        moved += int(clear.sum())
    assert moved > 0.9 * sum(v.numel() for v, _ in stepped.values())


@pytest.mark.parametrize("kind", ["standard", "hinge"])
def test_discriminator_step_trains_only_the_heads_on_teacher_samples(kind):
    den = checkpointed(student_denoiser())
    adv = Adversarial(den, teacher_steps=2, lr=1e-3, loss=kind)
    batch = aux_batch(den)

    # real samples: 2 equal CFG-DDIM teacher steps 600 → 300, then the teacher's x̂0 at 300 (written out)
    with teacher_mode(den.unet):
        x0, eps = den.predict_cfg(batch.z_t, batch.t, batch.cond, 8.0)
        mid = torch.div(batch.t, 2, rounding_mode="floor")
        expected = den.predict_cfg(den.ddim_move(x0, eps, mid), mid, batch.cond, 8.0)[0]
    torch.testing.assert_close(adv.real_samples(batch), expected, rtol=0, atol=0)

    unet_before = weights(den.unet)
    _assert_one_discriminator_step(adv, batch, expected)
    assert all(torch.equal(v, den.unet.get_parameter(n)) for n, v in unet_before.items())
    assert all(p.grad is None for p in [*den.unet.parameters(), *adv.parameters()])
    require_student_active(den.unet)


def test_lora_backbone_trains_with_the_heads_and_nothing_else():
    den = checkpointed(student_denoiser())
    adv = lora_backbone(den, teacher_steps=1, lr=1e-3)
    batch = aux_batch(den)
    others = {n: v for n, v in weights(den.unet).items() if ".disc." not in n}
    backbone = {n for n in weights(den.unet) if ".disc." in n}
    assert backbone and backbone <= set(adv.state_dict()["weights"])
    _assert_one_discriminator_step(adv, batch, adv.real_samples(batch))
    assert all(torch.equal(v, den.unet.get_parameter(n)) for n, v in others.items())   # student and base untouched
    assert all(p.grad is None for p in [*den.unet.parameters(), *adv.parameters()])
    require_student_active(den.unet)
    with pytest.raises(ValueError, match="backbone must be one of"):
        Adversarial(den, backbone="trainable")


def test_state_resumes_exactly_and_refuses_a_mismatch():
    torch.manual_seed(1)
    first = Adversarial(student_denoiser(), head_width=8, lr=1e-3)
    first.update(aux_batch(first.denoiser))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    den = student_denoiser()
    torch.manual_seed(2)                                             # different initial heads
    second = Adversarial(den, head_width=8, lr=1e-3)
    second.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    outs = [a.update(aux_batch(a.denoiser, seed=5)) for a in (first, second)]
    assert outs[0] == outs[1]
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))

    with pytest.raises(ValueError, match="does not fit"):
        Adversarial(den, head_width=16).load_state_dict(state)
    with pytest.raises(ValueError, match="does not fit"):       # a LoRA backbone's state holds that LoRA too
        Adversarial(student_denoiser(), head_width=8, backbone="lora", target_modules=TARGETS).load_state_dict(state)
    with pytest.raises(ValueError, match="not a 'gan' state"):
        second.load_state_dict(DistributionMatching(den, rank=2, target_modules=["to_q"]).state_dict())


def test_rollout_as_real_samples_is_eq_13_literally():
    den = student_denoiser()
    batch = aux_batch(den)
    adv = Adversarial(den, real="rollout", loss="hinge")
    assert torch.equal(adv.real_samples(batch), batch.rollout)
    _assert_one_discriminator_step(adv, batch, batch.rollout)
    without = AuxBatch(den, batch.cond, batch.prompts, batch.z_t, batch.t, batch.x0, torch.Generator())
    with pytest.raises(ValueError, match="needs the student rollout"):
        adv.real_samples(without)
    with pytest.raises(ValueError, match="real must be one of"):
        Adversarial(den, real="data")
    with pytest.raises(ValueError, match="loss must be one of"):
        Adversarial(den, loss="wasserstein")
