"""The student as a named PEFT LoRA adapter on the one frozen base UNet; the teacher is that UNet with
adapters disabled. No second UNet copy exists (docs/trainer.md §1).

The adapter-switch gradient trap (docs/trainer.md §3): PEFT's ``disable_adapters()`` /
``set_adapter(other)`` set ``requires_grad=False`` on the student's LoRA weights, and autograd then
silently drops their gradients if ``backward()`` runs in that state (with gradient checkpointing the
recomputation also runs in the state active *at backward time*). Every teacher call therefore goes
through :func:`teacher_mode`, which restores the student on exit, and the loop checks
:func:`require_student_active` right before ``backward()``.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from tlcm.lora import TLCM_TARGET_SUFFIXES

from .config import LoraConfig

STUDENT = "student"


def add_student(unet: torch.nn.Module, config: LoraConfig) -> list[torch.nn.Parameter]:
    """Freeze ``unet``, add the ``student`` LoRA (B = 0 init: the student starts as the teacher), and
    return its parameters cast to float32 (trainable masters over a possibly half-precision base)."""
    unet.requires_grad_(False)
    targets = list(config.target_modules or TLCM_TARGET_SUFFIXES)
    try:
        unet.add_adapter(PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=targets,
                                        init_lora_weights=True), adapter_name=STUDENT)
    except ValueError as err:          # PEFT: "Target modules {...} not found in the base model"
        raise ValueError(f"lora.target_modules {targets}: {err}") from err
    unet.set_adapter(STUDENT)
    params = student_parameters(unet)
    for p in params:
        p.data = p.data.float()
    return params


def add_side_adapter(unet: torch.nn.Module, name: str, rank: int, alpha: float,
                     target_modules: list[str] | None) -> dict[str, torch.nn.Parameter]:
    """Add a LoRA ``name`` beside the student (a technique's own trainable part on the shared base: the
    fake score, a trainable discriminator backbone) and return its parameters by name, as float32 masters.
    B = 0 init, so it starts as the base; the student stays the active adapter."""
    with warnings.catch_warnings():       # PEFT warns on any second adapter; several are the design here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        unet.add_adapter(PeftLoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                                        target_modules=list(target_modules or TLCM_TARGET_SUFFIXES)),
                         adapter_name=name)
    unet.set_adapter(STUDENT)                     # add_adapter activated the new one (docs/trainer.md §1)
    named = {n: p for n, p in unet.named_parameters() if f".{name}." in n}
    for p in named.values():
        p.data = p.data.float()
    return named


def student_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The student's LoRA weights, in a stable (module) order."""
    return [p for n, p in unet.named_parameters() if f".{STUDENT}." in n]


@contextmanager
def adapter_state(unet: torch.nn.Module, adapter: str | None) -> Iterator[None]:
    """Run under ``adapter`` (``None``: adapters disabled = the frozen base), grad enabled; the student
    adapter is active again on exit, also after an error."""
    if adapter is None:
        unet.disable_adapters()
    else:
        unet.set_adapter(adapter)
    try:
        yield
    finally:
        unet.enable_adapters()
        unet.set_adapter(STUDENT)


@contextmanager
def teacher_mode(unet: torch.nn.Module) -> Iterator[None]:
    """Run the frozen base (adapters disabled, no grad); the student is active again on exit."""
    with adapter_state(unet, None), torch.no_grad():
        yield


def require_student_active(unet: torch.nn.Module) -> None:
    """Raise if a backward now would lose student gradients (adapters disabled or another adapter set)."""
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer) and STUDENT in module.lora_A:
            if module.disable_adapters or STUDENT not in module.active_adapters \
                    or not module.lora_A[STUDENT].weight.requires_grad:
                raise RuntimeError("the student adapter is not active before backward(): its LoRA weights "
                                   "would get no gradients (adapter-switch trap, docs/trainer.md §3)")


def student_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The student LoRA weights (PEFT keys without the adapter name), detached CPU copies."""
    state = get_peft_model_state_dict(unet, adapter_name=STUDENT)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def load_student_state_dict(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved student weights back, refusing partial or mismatched states."""
    expected = set(get_peft_model_state_dict(unet, adapter_name=STUDENT))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"saved student LoRA does not fit this UNet/LoRA config: missing {missing[:3]}, "
                         f"unexpected {extra[:3]} ({len(missing)} / {len(extra)})")
    result = set_peft_model_state_dict(unet, state, adapter_name=STUDENT)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"unexpected keys when loading the student: {result.unexpected_keys[:3]}")
