"""The normalised in-memory LoRA: one ``LoraModule`` per adapted module, whatever the file format was.

Every reader produces this and every writer consumes it, so format conversion is read-then-write and
the merge maths lives in one place (``LoraModule.delta``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .base import BaseKind


@dataclass
class LoraModule:
    """A low-rank update ``delta = scale * up @ down`` for one Linear or Conv2d weight.

    ``down`` is (rank, in) or (rank, in, kh, kw); ``up`` is (out, rank) or (out, rank, 1, 1): the layout
    PEFT (lora_A/lora_B), kohya (lora_down/lora_up) and diffusers (lora.down/lora.up) all share.
    ``scale`` is ``alpha / rank``, or ``alpha / sqrt(rank)`` with rank-stabilised LoRA (PEFT ``use_rslora``).
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.down.ndim not in (2, 4) or self.up.ndim != self.down.ndim:
            raise ValueError(f"LoRA down/up must both be 2-D (Linear) or 4-D (Conv2d); got shapes "
                             f"{tuple(self.down.shape)} and {tuple(self.up.shape)}")
        if self.up.shape[1] != self.down.shape[0] or (self.up.ndim == 4 and self.up.shape[2:] != (1, 1)):
            raise ValueError(f"LoRA up {tuple(self.up.shape)} does not fit down {tuple(self.down.shape)}: "
                             "up must be (out, rank[, 1, 1]) and down (rank, in[, kh, kw])")
        if 0 in self.down.shape or 0 in self.up.shape:
            raise ValueError(f"LoRA down {tuple(self.down.shape)} / up {tuple(self.up.shape)} are empty (rank or "
                             "width 0)")
        if not math.isfinite(self.alpha):
            raise ValueError(f"LoRA alpha must be a finite number, got {self.alpha!r}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @property
    def delta_shape(self) -> tuple[int, ...]:
        return (int(self.up.shape[0]), *(int(s) for s in self.down.shape[1:]))

    def delta(self) -> torch.Tensor:
        """The weight update (fp32, shaped like the target weight) at strength 1."""
        product = self.up.flatten(1).float() @ self.down.flatten(1).float()
        return (self.scale * product).reshape(self.delta_shape)


@dataclass
class LoraFile:
    """A UNet LoRA keyed by module name, plus what the reader learned on the way.

    Names are diffusers module paths (``down_blocks.1.attentions.0.proj_in``), except for kohya files
    read without module names, whose keys stay flattened (``down_blocks_1_attentions_0_proj_in``) until
    matched against a model (``match_lora``) or resolved (``resolve_names``). ``skipped`` lists keys
    that do not apply to the UNet (text encoders) and ``notes`` every decision a user should see
    (where alpha came from, the official-loader scale).
    """

    modules: dict[str, LoraModule]
    source_format: str
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    names_resolved: bool = True
    base: BaseKind | None = None          # the model kind the trainer recorded in the file, if any

    @property
    def dtype(self) -> torch.dtype | None:
        return next(iter(self.modules.values())).down.dtype if self.modules else None

    def summary(self) -> str:
        """One paragraph for humans: format, module count, ranks, alphas, scales, notes."""
        def spread(values: list[float]) -> str:
            unique = sorted(set(values))
            return f"{unique[0]:g}" if len(unique) == 1 else f"{unique[0]:g}..{unique[-1]:g} ({len(unique)} values)"

        mods = list(self.modules.values())
        lines = [f"format: {self.source_format}", f"modules: {len(mods)} "
                 f"({sum(m.down.ndim == 4 for m in mods)} conv, {sum(m.down.ndim == 2 for m in mods)} linear)"]
        if mods:
            lines += [f"rank: {spread([m.rank for m in mods])}", f"alpha: {spread([m.alpha for m in mods])}",
                      f"scale: {spread([m.scale for m in mods])}", f"dtype: {str(self.dtype).removeprefix('torch.')}"]
        if self.skipped:
            lines.append(f"not applicable to the UNet: {len(self.skipped)} keys (e.g. {self.skipped[0]})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
