"""Presets: the CPU toy (default: "Train" works out of the box on a laptop) and 24/16/12 GB GPU setups.

A preset sets only the keys it is about; the GPU presets put every key the toy shrinks back to the
paper's value, so switching toy → GPU never trains SDXL at 64 px by accident. The GPU memory figures
are arithmetic (docs/trainer.md §2: frozen bf16/fp16 SDXL UNet + fp32 LoRA masters + optimizer state +
checkpointed activations at batch 1), not measurements.

The toy's model is one function, ``toy_model``: today the tiny offline SDXL kit (random weights, same
classes as SDXL), later the trained toy teacher from ``train/toy``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from train.config import Config

from .commands import LaunchOptions, flatten

TOY_PROMPTS = ("a red circle at the top left", "a blue striped square in the middle",
               "a green triangle at the bottom right", "a yellow dotted star on the left")


def app_home() -> Path:
    """The app's own folder (toy model, prompts): ``$TLCM_TRAINER_HOME`` or ``~/.cache/tlcm-trainer``."""
    return Path(os.environ.get("TLCM_TRAINER_HOME") or Path.home() / ".cache" / "tlcm-trainer").expanduser()


def toy_model() -> Path:
    """The CPU toy's base model, built offline on first use (seconds). Swap in the toy teacher here."""
    from tlcm.testing.build import build_tiny_sdxl
    return build_tiny_sdxl(app_home() / "tiny-sdxl").diffusers


def toy_prompts() -> Path:
    path = app_home() / "toy-prompts.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(TOY_PROMPTS) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Preset:
    """Config values (``section.key`` → value) and launch options one choice sets."""

    name: str
    summary: str
    values: Callable[[], dict[str, Any]]
    launch: LaunchOptions = field(default_factory=LaunchOptions)


def _toy() -> dict[str, Any]:
    return {"model.path": str(toy_model()), "data.prompts": [str(toy_prompts())],
            "data.sample_prompts": list(TOY_PROMPTS[:2]), **TOY_SIZES}


TOY_SIZES: dict[str, Any] = {
    "lora.rank": 4, "lora.alpha": 4.0, "lora.target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
    "distill.num_segments": 4, "mlcd.steps": 30, "lcd.steps": 10, "train.resolution": 64, "train.batch_size": 2,
    "train.mixed_precision": "no", "train.gradient_checkpointing": False, "train.optimizer": "adamw",
    "output.checkpoint_every": 10, "output.sample_every": 10,
}


def _gpu(**memory: Any) -> Callable[[], dict[str, Any]]:
    """Paper values for everything the toy shrinks, then the memory-related ``memory`` keys."""
    paper = flatten(Config())
    values = {key: paper[key] for key in TOY_SIZES}
    values.update({key.replace("__", "."): value for key, value in memory.items()})
    return lambda: dict(values)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("CPU toy", "tiny offline SDXL-architecture model, 40 steps at 64 px: finishes in about a minute on a "
           "CPU; shows the whole workflow, not a useful LoRA", _toy),
    Preset("24 GB GPU", "SDXL at 1024 px: bf16 frozen UNet, rank 64, AdamW, batch 1, gradient checkpointing",
           _gpu(train__mixed_precision="bf16", train__optimizer="adamw")),
    Preset("16 GB GPU", "as 24 GB with 8-bit AdamW (needs bitsandbytes)",
           _gpu(train__mixed_precision="bf16", train__optimizer="adamw8bit")),
    Preset("12 GB GPU", "fp16 frozen UNet, rank 32, 8-bit AdamW (needs bitsandbytes); sample grids every 1000 "
           "steps (decoding costs memory)",
           _gpu(train__mixed_precision="fp16", train__optimizer="adamw8bit", lora__rank=32, lora__alpha=4.0,
                output__sample_every=1000)),
)}
DEFAULT_PRESET = "CPU toy"
