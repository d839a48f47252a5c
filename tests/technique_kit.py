"""Shared by the technique tests (DMD, GAN): a tiny UNet with a non-trivial student, a student step's
AuxBatch, the student gradient through :func:`with_aux`, and the reference chain rule through x0."""
from __future__ import annotations

import torch

from tlcm.testing.tiny import CROSS_ATTENTION_DIM, SCHEDULER_CONFIG, TEXT_WIDTH_2, tiny_unet
from tlcm_train.adapters import add_student, require_student_active, student_parameters
from tlcm_train.aux_grad import AuxTerm, with_aux
from tlcm_train.config import LoraConfig
from tlcm_train.diffusion import Conditioning, Denoiser, sdxl_time_ids
from tlcm_train.technique import AuxBatch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]     # few modules: PEFT's per-module cost dominates on CPU


def student_denoiser(seed: int = 0) -> Denoiser:
    """Tiny UNet + ``student`` LoRA with random B (so its A gets gradients too); same seed, same weights."""
    torch.manual_seed(seed)
    unet = tiny_unet()
    add_student(unet, LoraConfig(rank=4, alpha=4, target_modules=TARGETS))
    with torch.no_grad():
        for p in student_parameters(unet):
            p.add_(0.05 * torch.randn_like(p))
    return Denoiser(unet, SCHEDULER_CONFIG, torch.device("cpu"))


def checkpointed(den: Denoiser) -> Denoiser:
    den.unet.enable_gradient_checkpointing()
    den.unet.train()
    return den


def aux_batch(den: Denoiser, seed: int = 3) -> AuxBatch:
    """A student step's batch: z_t diffuses a stand-in rollout ẑ0 (Eq. 9), x0 is the student's x̂0 of z_t
    **with its graph**; the generator is fresh."""
    g = torch.Generator().manual_seed(seed)
    cond = Conditioning(torch.randn(2, 77, CROSS_ATTENTION_DIM, generator=g),
                        torch.randn(2, TEXT_WIDTH_2, generator=g), sdxl_time_ids(64, 2))
    rollout, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([600, 300])
    z_t = den.add_noise(rollout, torch.randn(2, 4, 8, 8, generator=g), t)
    return AuxBatch(den, cond, ["a", "b"], z_t, t, den.predict(z_t, t, cond)[0], torch.Generator().manual_seed(seed),
                    rollout)


def grads_via_aux(den: Denoiser, batch: AuxBatch, terms: list[AuxTerm]) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Student LoRA gradients of the terms alone, the way the loop does it (one backward, student state)."""
    params = student_parameters(den.unet)
    for p in params:
        p.grad = None
    total, values = with_aux((batch.x0 * 0).sum(), batch.x0, terms)
    require_student_active(den.unet)
    total.backward()
    assert all(p.grad is None for n, p in den.unet.named_parameters() if ".student." not in n), "base/fake got grads"
    return [p.grad.clone() for p in params], values


def chain_rule(den: Denoiser, batch: AuxBatch, x0_grad: torch.Tensor) -> list[torch.Tensor]:
    """(∂x0/∂θ)ᵀ x0_grad on a fresh student forward of the batch."""
    x0 = den.predict(batch.z_t, batch.t, batch.cond)[0]
    return list(torch.autograd.grad(x0, student_parameters(den.unet), grad_outputs=x0_grad))


def relative_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    a, b = torch.cat([g.flatten() for g in got]), torch.cat([e.flatten() for e in expected])
    return float((a - b).norm() / b.norm())


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}
