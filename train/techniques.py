"""Which techniques run in which stage, built once from the config (docs/trainer.md §1, TLCM Table 2).

The paper adds its terms in turn: stage 3 = LCD + MPS, stage 4 = LCD + MPS + DMD + GAN. A term with
weight 0 is never built (no fake adapter, no heads, no scorer in memory), so every term is switchable.
"""
from __future__ import annotations

import torch

from .config import Config, ConfigError, MpsConfig
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
            built[name] = build_preference(config.mps, vae, config.train.resolution, device)
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
                                      sync=sync)
    return built


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(name: str, auto_cuda: torch.dtype, device: torch.device | str) -> torch.dtype:
    """``auto`` is ``auto_cuda`` on a CUDA device (bf16 only where the GPU has it) and fp32 elsewhere: CPU
    kernels in half precision are slow and the CPU has memory to spare."""
    if name != "auto":
        return DTYPES[name]
    if torch.device(device).type != "cuda" or (auto_cuda == torch.bfloat16 and not torch.cuda.is_bf16_supported()):
        return torch.float32
    return auto_cuda


def build_preference(mps: MpsConfig, vae, resolution: int, device: torch.device | str):
    """The preference technique with the memory options of ``mps`` (train/preference/decode.py)."""
    from .preference.scorer import build_scorer
    from .preference.technique import PreferenceTechnique
    latent_side = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    if mps.decode_crop > latent_side:
        raise ConfigError(f"mps.decode_crop: {mps.decode_crop} is larger than the latent side {latent_side} "
                          f"at train.resolution {resolution}")
    scorer = build_scorer(mps.scorer, mps.scorer_weights, device, resolve_dtype(mps.scorer_dtype, torch.float16, device))
    return PreferenceTechnique(vae, scorer, margin=mps.margin, weight=mps.weight,
                               decode_checkpoint=mps.decode_checkpoint,
                               decode_dtype=resolve_dtype(mps.decode_dtype, torch.bfloat16, device),
                               decode_crop=mps.decode_crop)


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
