"""The auxiliary-gradient utility (docs/trainer.md §3) on the tiny kit UNet with gradient checkpointing:
the student LoRA gets exactly the gradient of the total loss, computed independently in one graph over
copies of the UNet frozen in the other adapter states (no switch at all); base and ``fake`` get none."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig

from tlcm.testing.tiny import CROSS_ATTENTION_DIM, SCHEDULER_CONFIG, TEXT_WIDTH_2, tiny_unet
from tlcm_train.adapters import adapter_state, add_student, require_student_active, student_parameters
from tlcm_train.aux_grad import AuxTerm, with_aux
from tlcm_train.config import LoraConfig
from tlcm_train.diffusion import Conditioning, Denoiser, sdxl_time_ids

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores


def student_and_fake_unet() -> torch.nn.Module:
    """Tiny UNet with a non-trivial ``student`` (random B, so A gets gradients too) and a ``fake`` adapter
    that differs from the base, checkpointing on, in train mode."""
    torch.manual_seed(0)
    unet = tiny_unet()
    add_student(unet, LoraConfig(rank=4, alpha=4, target_modules=TARGETS))
    unet.add_adapter(PeftLoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False),
                     adapter_name="fake")
    unet.set_adapter("student")
    with torch.no_grad():
        for p in student_parameters(unet):
            p.add_(0.05 * torch.randn_like(p))
    unet.enable_gradient_checkpointing()
    return unet.train()


def test_aux_gradient_equals_single_graph_gradient_and_spares_base_and_fake():
    unet = student_and_fake_unet()
    # independent route: copies permanently in the other states, so one graph needs no adapter switch
    fake_net, base_net = copy.deepcopy(unet), copy.deepcopy(unet)
    fake_net.set_adapter("fake")
    base_net.disable_adapters()
    g = torch.Generator().manual_seed(3)
    cond = Conditioning(torch.randn(2, 77, CROSS_ATTENTION_DIM, generator=g), torch.randn(2, TEXT_WIDTH_2, generator=g),
                        sdxl_time_ids(64, 2))
    z, t, t_aux = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([600, 300]), torch.tensor([400, 800])
    noise, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)

    def scored(net: torch.nn.Module):
        den = Denoiser(net, SCHEDULER_CONFIG, torch.device("cpu"))
        return lambda x0: den.model_output(den.add_noise(x0, noise, t_aux), t_aux, cond).square().mean()

    def main_loss(net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = Denoiser(net, SCHEDULER_CONFIG, torch.device("cpu")).predict(z, t, cond)[0]
        return (x0 - target).square().mean(), x0

    params = student_parameters(unet)
    # the utility: both auxiliary terms run on the *same* UNet under their own states
    loss, x0 = main_loss(unet)
    total, values = with_aux(loss, x0, [
        AuxTerm("fake", scored(unet), weight=5.0, state=lambda: adapter_state(unet, "fake")),
        AuxTerm("real", scored(unet), weight=-2.0, state=lambda: adapter_state(unet, None)),
        AuxTerm("plain", lambda x: x.abs().mean(), weight=0.3)])
    require_student_active(unet)
    total.backward()
    got = [p.grad.clone() for p in params]
    assert all(p.grad is None for n, p in unet.named_parameters() if ".student." not in n), "base/fake got grads"

    # reference: one graph, one backward
    for p in params:
        p.grad = None
    loss_ref, x0_ref = main_loss(unet)
    (loss_ref + 5.0 * scored(fake_net)(x0_ref) - 2.0 * scored(base_net)(x0_ref) + 0.3 * x0_ref.abs().mean()).backward()
    expected = [p.grad.clone() for p in params]
    assert values["fake"] == pytest.approx(float(scored(fake_net)(x0_ref.detach()).detach()), rel=1e-5)
    assert values["fake"] != pytest.approx(values["real"], rel=1e-3)           # the two states really differ
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert all(float(a.abs().sum()) > 0 for a in got)

    # and the injected part is not negligible: without it the gradient is clearly different
    for p in params:
        p.grad = None
    main_loss(unet)[0].backward()
    gap = sum(float((p.grad - e).abs().sum()) for p, e in zip(params, expected))
    assert gap > 0.03 * sum(float(e.abs().sum()) for e in expected)


def test_bad_terms_fail_clearly_and_leave_the_student_active():
    unet = student_and_fake_unet()
    x0 = Denoiser(unet, SCHEDULER_CONFIG, torch.device("cpu")).predict(
        torch.randn(1, 4, 8, 8), torch.tensor([500]),
        Conditioning(torch.randn(1, 77, CROSS_ATTENTION_DIM), torch.randn(1, TEXT_WIDTH_2), sdxl_time_ids(64, 1)))[0]
    with pytest.raises(ValueError, match="'const' does not depend on x0"):
        with_aux(x0.mean(), x0, [AuxTerm("const", lambda x: torch.ones((), requires_grad=True),
                                         state=lambda: adapter_state(unet, "fake"))])
    require_student_active(unet)
    with pytest.raises(ValueError, match="must be a scalar"):
        with_aux(x0.mean(), x0, [AuxTerm("vec", lambda x: x.sum(dim=0), state=lambda: adapter_state(unet, None))])
    require_student_active(unet)
