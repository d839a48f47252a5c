"""TLCM's recipe as a list of stages over one shared model (docs/trainer.md §1).

A :class:`TrainingStage` is one stage of the schedule: its span of global steps, its learning rate, its
gradient accumulation (the stage's batch over ``train.batch_size`` × processes), how it builds consistency pairs (stage 1: MLCD's segment targets; stages 2-4: LCD's rollout pairs) and the
techniques whose terms it adds (stage 3: preference; stage 4: preference, distribution matching,
adversarial). Every stage trains the same student LoRA with the one student optimiser the trainer owns:
the paper continues one LoRA from stage to stage, and one AdamW with an absolute per-stage learning rate
keeps its moments across the switch and resumes exactly. Each technique owns its own trainable parts and
their optimiser (the fake-score adapter, the discriminator heads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .aux_grad import Logged, with_aux
from .config import Config, ConfigError
from .consistency import Stage as PairBuilder
from .consistency import consistency_step
from .diffusion import Conditioning, Denoiser
from .losses import Distance
from .stage1_mlcd import MlcdStage
from .stage2_lcd import LcdStage
from .technique import AuxBatch, Technique
from .stage_techniques import STAGE_TECHNIQUES

PhaseHook = Callable[[str], None]
"""Called with a phase name as each part of a step ends ("pair", "student_fwd", "term:<name>", ...): the
public measurement hook (bench/memory_stages.py records memory per phase through it)."""


@dataclass
class StepOutcome:
    """What one stage step computed before the student's backward."""

    loss: torch.Tensor                  # the consistency loss (logged)
    objective: torch.Tensor             # what ``backward()`` is called on: the loss plus the auxiliary terms' surrogate
    values: Logged                      # every term's value, for logging
    batch: AuxBatch | None              # what the techniques' own updates read (None without techniques)


@dataclass
class TrainingStage:
    """One stage: steps ``[start, start + steps)``, its lr, its pair builder and its techniques (name → technique)."""

    name: str
    start: int
    steps: int
    lr: float
    pairs: PairBuilder
    techniques: dict[str, Technique]
    accumulation: int = 1               # micro-batches per optimizer step

    @property
    def end(self) -> int:
        return self.start + self.steps

    def lr_at(self, step: int, warmup_steps: int) -> float:
        """The absolute learning rate at global ``step``: linear warm-up over the stage's first steps."""
        return self.lr * min(1.0, (step - self.start + 1) / warmup_steps) if warmup_steps else self.lr

    def objective(self, denoiser: Denoiser, cond: Conditioning, prompts: list[str], distance: Distance,
                  generator: torch.Generator, on_phase: PhaseHook | None = None) -> StepOutcome:
        """The consistency loss on a fresh pair, plus every technique's terms on the student's x̂0, ready
        for one backward in the student state (docs/trainer.md §3)."""
        loss, pair, x0 = consistency_step(self.pairs, denoiser, cond, distance, generator, on_phase)
        values = {f"loss/{self.name}": loss.detach()}
        if not self.techniques:
            return StepOutcome(loss, loss, values, None)
        batch = AuxBatch(denoiser, cond, prompts, pair.z_m, pair.t_m, x0, generator, pair.rollout)
        terms = [term for technique in self.techniques.values() for term in technique.terms(batch)]
        objective, term_values = with_aux(loss, x0, terms, on_phase)
        values.update({f"loss/{k}": v for k, v in term_values.items()})
        return StepOutcome(loss, objective, values, batch)

    def update_techniques(self, batch: AuxBatch | None, on_phase: PhaseHook | None = None) -> Logged:
        """Each technique's own optimiser steps, after the student's; their logged values."""
        values: Logged = {}
        for name, technique in self.techniques.items():
            values.update(technique.update(batch))
            if on_phase:
                on_phase(f"update:{name}")
        return values


def accumulation(stage_batch: int, micro_batch: int, processes: int, key: str) -> int:
    """Micro-batches per optimizer step that make ``stage_batch`` samples from ``micro_batch`` per process."""
    if stage_batch == 0:
        return 1
    per_step = micro_batch * processes
    if stage_batch % per_step:
        raise ConfigError(f"{key}: {stage_batch} is not a multiple of train.batch_size x processes = "
                          f"{micro_batch} x {processes}; pick a multiple, or 0 for no accumulation")
    return stage_batch // per_step


def build_stages(config: Config, latent_shape: tuple[int, int, int], num_train_timesteps: int,
                 techniques: dict[str, Technique], processes: int = 1) -> list[TrainingStage]:
    """The stages with steps, in training order; stages 2-4 share one LCD pair builder, and a technique
    used by stages 3 and 4 is one object (its state carries over)."""
    lcd = LcdStage(config.distill, config.lcd, latent_shape, num_train_timesteps)
    pairs: dict[str, PairBuilder] = {"mlcd": MlcdStage(config.distill, config.mlcd, latent_shape, num_train_timesteps),
                                     "lcd": lcd, "mps": lcd, "dm": lcd}
    return [TrainingStage(name, start, steps, getattr(config, name).lr, pairs[name],
                          {t: techniques[t] for t in STAGE_TECHNIQUES[name] if t in techniques},
                          accumulation(getattr(config, name).batch_size, config.train.batch_size, processes,
                                       f"{name}.batch_size"))
            for name, start, steps in config.stage_spans() if steps]


def stage_at(stages: list[TrainingStage], step: int) -> TrainingStage:
    """The stage global ``step`` belongs to."""
    for stage in stages:
        if stage.start <= step < stage.end:
            return stage
    raise IndexError(f"step {step} is past the end of training ({stages[-1].end if stages else 0} steps)")


def stage_lr(stages: list[TrainingStage], step: int, warmup_steps: int) -> float:
    """The absolute learning rate at global ``step`` (the last stage's past the end, for the LR schedule's
    final call)."""
    return stage_at(stages, min(step, stages[-1].end - 1)).lr_at(step, warmup_steps)
