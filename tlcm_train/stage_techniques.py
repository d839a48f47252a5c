"""Maps each stage to the techniques it runs and builds them once from the config (docs/trainer.md §1,
TLCM Table 2). The contract every technique follows is tlcm_train/technique.py.

The paper adds its terms in turn: stage 3 = LCD + MPS, stage 4 = LCD + MPS + DMD + GAN. A term with
weight 0 is never built (no fake adapter, no heads, no scorer in memory), so every term is switchable.
"""
from __future__ import annotations

import torch

from tlcm.models.device import auto_device_dtype

from .config import Config, ConfigError, MpsConfig
from tlcm.models.device import DTYPE_NAMES
from .diffusion import Denoiser
from .technique import Technique
from .trainables import Sync

STAGE_TECHNIQUES: dict[str, tuple[str, ...]] = {"mlcd": (), "lcd": (), "mps": ("mps",), "dm": ("mps", "dmd", "gan")}


def needed(config: Config) -> list[str]:
    """Names of the techniques some stage with steps > 0 uses and whose weight is > 0."""
    weights = {"mps": config.mps.weight, "dmd": config.dm.dmd_weight, "gan": config.dm.gan_weight}
    used = {name for stage, steps in config.stage_steps() if steps for name in STAGE_TECHNIQUES[stage]}
    return [name for name in ("mps", "dmd", "gan") if name in used and weights[name] > 0]


def build_techniques(config: Config, denoiser: Denoiser, vae, latent_side: int, device,
                     sync: Sync | None, prompts: list[str] | None = None) -> dict[str, Technique]:
    """The needed techniques, each sharing ``denoiser.unet`` (the fake score is a second adapter on it);
    ``prompts`` (the training prompt list) is the pool of the preference term's unrelated prompts."""
    built: dict[str, Technique] = {}
    for name in needed(config):
        if name == "mps":
            built[name] = build_preference(config.mps, vae, latent_side, device, prompts)
        elif name == "dmd":
            from .dmd import DistributionMatching
            built[name] = DistributionMatching(denoiser, rank=config.dm.fake_rank, alpha=config.dm.fake_alpha,
                                               target_modules=config.lora.target_modules, lr=config.dm.fake_lr,
                                               fake_updates=config.dm.fake_updates,
                                               guidance_scale=config.distill.guidance_scale,
                                               weight=config.dm.dmd_weight, fake_data=config.dm.fake_data,
                                               sync=sync)
        else:
            from .adversarial import Adversarial
            built[name] = Adversarial(denoiser, lr=config.dm.disc_lr, weight=config.dm.gan_weight,
                                      guidance_scale=config.distill.guidance_scale,
                                      teacher_steps=config.dm.gan_teacher_steps, real=config.dm.gan_real,
                                      loss=config.dm.gan_loss, backbone=config.dm.disc_backbone,
                                      backbone_rank=config.dm.disc_rank, backbone_alpha=config.dm.disc_alpha,
                                      target_modules=config.lora.target_modules, sync=sync)
    return built


def preference_dtypes(mps: MpsConfig, device: torch.device | str) -> tuple[torch.dtype, torch.dtype]:
    """(scorer, decode) dtypes; ``auto`` follows the core's device rule (``auto_device_dtype``) except
    that the scorer takes fp16 on CUDA (as MPS ships) and the decode never fp16 (SDXL's VAE overflows):
    fp32 wherever the rule would not give bf16."""
    device_type, rule = torch.device(device).type, auto_device_dtype(device)[1]
    scorer = DTYPE_NAMES.get(mps.scorer_dtype) or (torch.float16 if device_type == "cuda" else torch.float32)
    decode = DTYPE_NAMES.get(mps.decode_dtype) or (rule if rule == torch.bfloat16 else torch.float32)
    return scorer, decode


def build_preference(mps: MpsConfig, vae, latent_side: int, device: torch.device | str,
                     negative_pool: list[str] | None = None):
    """The preference technique with the memory options of ``mps`` (tlcm_train/preference/decode.py)."""
    from .preference.scorer import build_scorer
    from .preference.technique import PreferenceTechnique
    if mps.decode_crop > latent_side:
        raise ConfigError(f"mps.decode_crop: {mps.decode_crop} is larger than the latent side {latent_side}")
    scorer_dtype, decode_dtype = preference_dtypes(mps, device)
    return PreferenceTechnique(vae, build_scorer(mps.scorer, mps.scorer_weights, device, scorer_dtype),
                               margin=mps.margin, weight=mps.weight, decode_checkpoint=mps.decode_checkpoint,
                               decode_dtype=decode_dtype, decode_crop=mps.decode_crop,
                               negative_pool=negative_pool)


def first_step_using(config: Config, name: str) -> int:
    """The global step at which technique ``name`` first trains (``total_steps`` if never)."""
    return min((start for stage, start, steps in config.stage_spans() if steps and name in STAGE_TECHNIQUES[stage]),
               default=config.total_steps)
