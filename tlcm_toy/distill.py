"""Distil the committed toy teacher with the real trainer: the settings the demo, the benchmark and the
trainer app's CPU preset share (``tlcm_toy/toy.yaml``).

Where the toy departs from the paper's SDXL values, and why: CFG w = 3 (the better-FD guidance of the two
measured in bench/results/toy_teacher.md, 1 and 3; w = 8 was not tried), 32 px images (16² latents), LoRA
rank 16 with alpha 16 on TLCM's targets (the toy UNet has 4 M parameters), batch 32, every learning rate 5x
the paper's (MLCD 5e-4, the later stages 5e-5, fake score 5e-5, discriminator 5e-4: 1e-4 moved the
student too little in 200 MLCD steps), and a few hundred steps instead of 12k + 2k, so that a 2-core
CPU finishes in minutes.
"""
from __future__ import annotations

from pathlib import Path

from tlcm_train.config import Config, load_config

from .bench_teacher import DEFAULT_TEACHER, ensure_tokenizers
from .data import write_prompts

TOY_CONFIG = Path(__file__).resolve().parent / "toy.yaml"
WEIGHTS = Path(__file__).resolve().parent / "weights"
TRAIN_PROMPTS, PROMPT_SEED = 4000, 0


def toy_prompts(path: str | Path) -> Path:
    """The toy's training prompts (English and Chinese, uniform over attributes), written once."""
    path = Path(path)
    return path if path.is_file() else write_prompts(path, TRAIN_PROMPTS, PROMPT_SEED)


def toy_config(output_dir: str | Path, overrides: list[str] = (), teacher: str | Path = DEFAULT_TEACHER) -> Config:
    """``toy.yaml`` with the committed teacher, toy scorer and toy latent LPIPS, prompts beside the outputs,
    then ``overrides``."""
    output_dir = Path(output_dir)
    prompts = toy_prompts(output_dir.parent / "toy-prompts.txt")
    return load_config(TOY_CONFIG, [f"model.path={ensure_tokenizers(teacher)}", f"data.prompts=[{prompts}]",
                                    f"output.dir={output_dir}", f"mps.scorer_weights={WEIGHTS / 'scorer.safetensors'}",
                                    f"distill.lpips_weights={WEIGHTS / 'lpips.safetensors'}", *overrides])
