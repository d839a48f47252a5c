"""Presets: what one choice in the app's Preset menu sets. The built-in ones are 24/16/12 GB GPU setups of
the paper's recipe; a launcher may put its own first (the toy world's CPU preset, ``tlcm_toy.trainer_app``).

A preset sets only the keys it is about; the GPU presets put every setting except the user's paths back to
the paper's value (stages 3-4 included, so ``mps.scorer_weights`` is then the user's to fill in), so
switching from another preset never trains SDXL at 32 px by accident. The GPU memory figures are arithmetic
at batch 1 (bench/results/memory_stages.md: exact parameter counts, activations scaled from a mid-size model
measured on the CPU), not GPU measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tlcm_train.config import Config

from .commands import LaunchOptions, flatten

PATH_KEYS = ("model.path", "data.prompts", "output.dir")     # the user's; a preset never puts its own here
CROP_16GB = 64               # latent window the smaller presets decode for the preference term (1024² → 128²)


@dataclass(frozen=True)
class Preset:
    """Config values (``section.key`` → value) and launch options one choice sets; ``about`` says what
    the preset trains (a function: a preset's text may depend on files that appear while the app runs)."""

    name: str
    about: Callable[[], str]
    values: Callable[[], dict[str, Any]]
    launch: LaunchOptions = field(default_factory=LaunchOptions)

    @property
    def summary(self) -> str:
        return self.about()


def _gpu(**memory: Any) -> Callable[[], dict[str, Any]]:
    """Paper values for every key except the user's paths, then the memory-related keys."""
    def values() -> dict[str, Any]:
        chosen = {key: value for key, value in flatten(Config()).items() if key not in PATH_KEYS}
        chosen.update({key.replace("__", "."): value for key, value in memory.items()})
        return chosen
    return values


def _gpu_note() -> str:
    paper = Config()
    return (f" Paper schedule: {paper.mlcd.steps} MLCD + {paper.lcd.steps} LCD + {paper.mps.steps} preference + "
            f"{paper.dm.steps} DM/GAN steps. Stages 3-4 need the MPS scorer weights (the field under the stages; "
            "`tlcm_train/preference/mps.py` says how to get them), or turn them off. Fill in your SDXL model.")


GPU_PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("24 GB GPU", lambda: "SDXL at 1024 px: bf16 frozen UNet, rank 64, AdamW, batch 1, gradient "
           "checkpointing; the preference term decodes checkpointed in bf16 (stage 4 ≈ 17 GiB, "
           "bench/results/memory_stages.md)." + _gpu_note(), _gpu(train__mixed_precision="bf16", train__optimizer="adamw")),
    Preset("16 GB GPU", lambda: "As 24 GB with 8-bit AdamW (needs bitsandbytes); stages 3-4 score a random "
           f"quarter of each image (mps.decode_crop {CROP_16GB}: stage 4 ≈ 11.5 GiB instead of ≈ 14.4)." + _gpu_note(),
           _gpu(train__mixed_precision="bf16", train__optimizer="adamw8bit", mps__decode_crop=CROP_16GB)),
    Preset("12 GB GPU", lambda: "fp16 frozen UNet, rank 32, 8-bit AdamW (needs bitsandbytes); sample grids every "
           f"1000 steps (decoding costs memory); stages 3-4 score a random quarter of each image (mps.decode_crop "
           f"{CROP_16GB})." + _gpu_note(),
           _gpu(train__mixed_precision="fp16", train__optimizer="adamw8bit", lora__rank=32, lora__alpha=4.0,
                output__sample_every=1000, mps__decode_crop=CROP_16GB)),
)}
