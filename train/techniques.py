"""Which techniques run in which stage, built once from the config (docs/trainer.md §1, TLCM Table 2).

The paper adds its terms in turn: stage 3 = LCD + MPS, stage 4 = LCD + MPS + DMD + GAN. A term with
weight 0 is never built (no fake adapter, no heads, no scorer in memory), so every term is switchable.
"""
from __future__ import annotations

from .config import Config
from .diffusion import Denoiser
from .technique import Technique
from .trainables import Sync

STAGE_TECHNIQUES: dict[str, tuple[str, ...]] = {"mlcd": (), "lcd": (), "mps": ("mps",), "dm": ("mps", "dmd", "gan")}


def needed(config: Config) -> list[str]:
    """Names of the techniques some stage with steps > 0 uses and whose weight is > 0."""
    weights = {"mps": config.mps.weight, "dmd": config.dm.dmd_weight, "gan": config.dm.gan_weight}
    used = {name for stage, steps in config.stage_steps() if steps for name in STAGE_TECHNIQUES[stage]}
    return [name for name in ("mps", "dmd", "gan") if name in used and weights[name] > 0]


def build_techniques(config: Config, denoiser: Denoiser, vae, device, sync: Sync | None) -> dict[str, Technique]:
    """The needed techniques, each sharing ``denoiser.unet`` (the fake score is a second adapter on it)."""
    built: dict[str, Technique] = {}
    for name in needed(config):
        if name == "mps":
            from .preference.scorer import build_scorer
            from .preference.technique import PreferenceTechnique
            built[name] = PreferenceTechnique(vae, build_scorer(config.mps.scorer, config.mps.scorer_weights, device),
                                              margin=config.mps.margin, weight=config.mps.weight)
        elif name == "dmd":
            from .dmd import DistributionMatching
            built[name] = DistributionMatching(denoiser, rank=config.dm.fake_rank, alpha=config.dm.fake_alpha,
                                               target_modules=config.lora.target_modules, lr=config.dm.fake_lr,
                                               fake_updates=config.dm.fake_updates,
                                               guidance_scale=config.distill.guidance_scale,
                                               weight=config.dm.dmd_weight, sync=sync)
        else:
            from .adversarial import Adversarial
            built[name] = Adversarial(denoiser, lr=config.dm.disc_lr, weight=config.dm.gan_weight,
                                      guidance_scale=config.distill.guidance_scale,
                                      teacher_steps=config.dm.gan_teacher_steps, sync=sync)
    return built


def first_step_using(config: Config, name: str) -> int:
    """The global step at which technique ``name`` first trains (``total_steps`` if never)."""
    start = 0
    for stage, steps in config.stage_steps():
        if steps and name in STAGE_TECHNIQUES[stage]:
            return start
        start += steps
    return start


def active(stage: str, built: dict[str, Technique]) -> list[Technique]:
    return [built[name] for name in STAGE_TECHNIQUES[stage] if name in built]
