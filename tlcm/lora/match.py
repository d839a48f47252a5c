"""Match a ``LoraFile`` against a UNet (or its module names) and merge it into the weights.

Matching is explicit so that a LoRA for the wrong model fails loudly: zero matches or any shape
mismatch raise ``LoraMatchError``; a partial match is logged and reported with counts.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .names import flat_index, lookup
from .targets import TLCM_TARGET_SUFFIXES, is_tlcm_target, tlcm_target_modules
from .weights import LoraFile

log = logging.getLogger(__name__)


class LoraMatchError(ValueError):
    """The LoRA does not fit the model: no module matched, or matched modules have other shapes."""


@dataclass
class MatchReport:
    """Which LoRA modules hit which model modules, and what was left over on either side."""

    matched: dict[str, str]                       # LoRA module name -> model module path
    unmatched: list[str]                          # LoRA modules with no counterpart in the model
    untouched_targets: list[str]                  # TLCM target modules of the model the LoRA leaves alone
    model_targets: int                            # TLCM target modules of the model
    skipped: list[str] = field(default_factory=list)   # text-encoder keys of the file

    @property
    def coverage(self) -> float:
        """Fraction of the model's TLCM targets the LoRA adapts."""
        return 1.0 - len(self.untouched_targets) / self.model_targets if self.model_targets else 0.0

    def summary(self) -> str:
        total = len(self.matched) + len(self.unmatched)
        text = (f"{len(self.matched)}/{total} LoRA modules matched; TLCM targets covered "
                f"{self.model_targets - len(self.untouched_targets)}/{self.model_targets}")
        if self.unmatched:
            text += f"; unmatched LoRA modules e.g. {self.unmatched[:3]}"
        if self.skipped:
            text += f"; {len(self.skipped)} text-encoder keys not applicable to the UNet"
        return text


def _weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: mod.weight for name, mod in model.named_modules()
            if isinstance(getattr(mod, "weight", None), torch.Tensor)}


def _same_shape(delta: tuple[int, ...], weight: tuple[int, ...]) -> bool:
    """Equal shapes, treating a Linear (o, i) and a 1x1 Conv2d (o, i, 1, 1) weight as the same."""
    def strip(shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape
    return strip(delta) == strip(weight)


def _no_match_error(lora: LoraFile, names: set[str], n_targets: int) -> LoraMatchError:
    if not lora.modules:
        cause = f"the file has no UNet LoRA modules, only {len(lora.skipped)} text-encoder keys"
    else:
        cause = ("likely a LoRA for another architecture (SD1.5, FLUX), "
                 "renamed/random keys, or a text-encoder LoRA")
    return LoraMatchError(
        f"0 of {len(lora.modules)} LoRA modules ({lora.source_format} format) match any of the model's "
        f"{len(names)} modules ({n_targets} TLCM targets): {cause}. LoRA names e.g. {list(lora.modules)[:3]}")


def match_lora(lora: LoraFile, unet_or_module_names: nn.Module | Iterable[str], *,
               target_suffixes: tuple[str, ...] = TLCM_TARGET_SUFFIXES) -> MatchReport:
    """Pair LoRA modules with model modules (exact paths; kohya names via the model's flattened names).

    With a model, shapes are checked too. Raises ``LoraMatchError`` on zero matches or shape mismatches.
    ``target_suffixes`` names the model's TLCM targets for the coverage count when module names are given
    (``TLCM_FLUX_TARGET_SUFFIXES`` for a FLUX transformer).
    """
    model = unet_or_module_names if isinstance(unet_or_module_names, nn.Module) else None
    weights = _weights_of(model) if model is not None else {}
    names = set(weights) if model is not None else set(unet_or_module_names)
    found = lookup(lora, flat_index(names), names)
    matched = {n: p for n, p in found.items() if p is not None}
    targets = (tlcm_target_modules(model) if model is not None
               else sorted(n for n in names if is_tlcm_target(n, target_suffixes)))
    if not matched:
        raise _no_match_error(lora, names, len(targets))
    wrong = [f"{p}: LoRA {lora.modules[n].delta_shape} vs weight {tuple(weights[p].shape)}"
             for n, p in matched.items()
             if model is not None and not _same_shape(lora.modules[n].delta_shape, tuple(weights[p].shape))]
    if wrong:
        raise LoraMatchError(f"{len(wrong)} of {len(matched)} matched modules have other shapes than the model "
                             f"(e.g. {wrong[:3]}): the LoRA was trained for a differently sized model")
    hit = set(matched.values())
    report = MatchReport(matched, [n for n, p in found.items() if p is None],
                         [t for t in targets if t not in hit], len(targets), list(lora.skipped))
    if report.unmatched:
        log.warning("LoRA partially applies: %s", report.summary())
    return report


def merge_lora(unet: nn.Module, lora: LoraFile, strength: float = 1.0) -> MatchReport:
    """Add ``strength * scale * up @ down`` to every matched weight, in place (computed in fp32)."""
    report = match_lora(lora, unet)
    weights = _weights_of(unet)
    with torch.no_grad():
        for name, path in report.matched.items():
            weight = weights[path]
            delta = lora.modules[name].delta().to(weight.device).reshape(weight.shape)
            weight.copy_((weight.float() + strength * delta).to(weight.dtype))
    return report
