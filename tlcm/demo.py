"""``tlcm demo``: a smoke run of the whole sampling path on embedded defaults, no downloads, no training.

Builds the tiny seeded SDXL kit (diffusers folder + single-file checkpoint), loads it through the same
loader real models use, samples with ``TLCMScheduler`` at 2, 4 and 8 steps and writes the PNGs plus a
side-by-side grid. The tiny model is random, so the images are noise-like patterns: the point is the
whole path working offline. The distillation demo is ``python run.py demo`` (``tlcm_toy/demo.py``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from .generate import GenerationSettings, generate, save_images

DEMO_STEPS = (2, 4, 8)
DEMO_PROMPT = "a red striped circle at the top left"


def run_demo(out_dir: str | Path, seed: int = 0, size: int = 64) -> list[Path]:
    from .models import load_sdxl_pipeline
    from .testing.build import build_tiny_sdxl
    out_dir = Path(out_dir)
    kit = build_tiny_sdxl(out_dir / "tiny_sdxl", seed=seed)
    print(f"[demo] tiny SDXL kit: {kit.diffusers} and {kit.checkpoint}", flush=True)
    pipe = load_sdxl_pipeline(kit.diffusers, device="cpu")
    written, row = [], []
    for steps in DEMO_STEPS:
        settings = GenerationSettings(prompt=DEMO_PROMPT, steps=steps, seed=seed, width=size, height=size,
                                      model=str(kit.diffusers))
        images = generate(pipe, settings)
        written += save_images(images, out_dir / "images", settings)
        row.append(images[0])
    grid = Image.new("RGB", (size * len(row), size))
    for i, image in enumerate(row):
        grid.paste(image, (i * size, 0))
    grid_path = out_dir / "grid_2_4_8_steps.png"
    grid.save(grid_path)
    return [*written, grid_path]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="offline quickstart: tiny kit + TLCM sampling at 2/4/8 steps",
                              description=__doc__)
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: _print_paths(run_demo(args.out, args.seed)))
    return p


def _print_paths(paths: list[Path]) -> int:
    print("[demo] wrote:")
    for path in paths:
        print(f"  {path}")
    return 0
