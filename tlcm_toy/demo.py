"""The quickstart job (``python run.py demo``): distil the toy teacher into a TLCM LoRA on the CPU, then
compare it with the teacher.

1. trains the student LoRA with the data-free pipeline (stage 1 MLCD, then stage 2 LCD; ``toy.yaml``);
2. loads the exported kohya file through the core's LoRA loader (the path ComfyUI/WebUI users take);
3. writes a comparison grid (rows: prompts; columns: teacher DDIM-25 + CFG, teacher DDIM 2/4 + CFG,
   TLCM 1–8 steps) and a metrics table (markdown + JSON) from the frozen toy evaluator;
4. prints where everything is.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from tlcm.generate import apply_loras

from .bench_teacher import load_teacher
from .distill import toy_config
from .evaluate import Sampler, markdown_table, score_samplers, summarise
from .evaluator import load_evaluator

GRID_STEPS = (1, 2, 3, 4, 8)
GRID_ROWS, SCALE = 6, 3


def samplers(teacher, student, tlcm_steps=GRID_STEPS) -> tuple[Sampler, list[Sampler]]:
    """The reference (teacher DDIM-25, w from the distillation) and the compared samplers."""
    reference = Sampler("teacher DDIM-25 + CFG", teacher, 25, 3.0)
    rows = [reference, Sampler("teacher DDIM-2 + CFG", teacher, 2, 3.0), Sampler("teacher DDIM-4 + CFG", teacher, 4, 3.0)]
    return reference, rows + [Sampler(f"TLCM-{n}", student, n, scheduler="tlcm") for n in tlcm_steps]


def comparison_grid(previews: dict[str, np.ndarray], path: Path, rows: int = GRID_ROWS) -> Path:
    """One column per sampler (labelled), one row per prompt; images upscaled ×3 (nearest) to be seen."""
    size = previews[next(iter(previews))].shape[-1] * SCALE
    header = 14
    grid = Image.new("RGB", (size * len(previews), header + size * rows), "white")
    draw = ImageDraw.Draw(grid)
    for col, (label, images) in enumerate(previews.items()):
        draw.text((col * size + 2, 1), label.replace("teacher ", "T ").replace(" + CFG", "+cfg"), fill="black")
        for row in range(rows):
            pixels = (images[row].transpose(1, 2, 0) * 255).round().astype(np.uint8)
            tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
            grid.paste(tile, (col * size, header + row * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def run_demo(out: Path, n: int, seed: int, overrides: list[str]) -> dict[str, Path]:
    from tlcm_train.loop import Trainer
    torch.manual_seed(seed)
    config = toy_config(out / "run", overrides)
    started = time.perf_counter()
    result = Trainer(config).run()
    train_seconds = time.perf_counter() - started
    teacher, student = load_teacher(), load_teacher()
    apply_loras(student, [(str(result.lora_files["kohya"]), 1.0)])
    reference, compared = samplers(teacher, student)
    rows, previews = score_samplers(compared, reference, load_evaluator(), n, seed)
    summary = summarise([rows])
    record = dict(command="python run.py demo", train_seconds=round(train_seconds, 1), steps=result.step,
                  mlcd_steps=config.mlcd.steps, lcd_steps=config.lcd.steps, batch=config.train.batch_size,
                  final_losses=result.losses[-5:], n=n, seed=seed, rows=rows,
                  lora_files={k: str(v) for k, v in result.lora_files.items()})
    table = (f"# TLCM demo: toy teacher distilled in {train_seconds / 60:.1f} min on this CPU\n\n"
             f"{result.step} steps ({config.mlcd.steps} MLCD + {config.lcd.steps} LCD) at batch "
             f"{config.train.batch_size}; N = {n} held-out prompts, noise seed {seed}; FD/KID against real toy "
             "images, fd_teacher25 = FD to the teacher's DDIM-25 + CFG samples (evaluator features). The "
             "benchmark (bench/results/toy_table1.md) has longer runs and several seeds.\n\n" + markdown_table(summary, 1))
    paths = {"lora": result.lora_files["kohya"].parent, "grid": comparison_grid(previews, out / "comparison.png"),
             "metrics": out / "metrics.md", "metrics_json": out / "metrics.json", "samples": out / "run" / "samples"}
    paths["metrics"].write_text(table, encoding="utf-8")
    paths["metrics_json"].write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print("\n" + table)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python run.py demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--n", type=int, default=250, help="prompts scored per sampler (default 250)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a toy.yaml value, e.g. --set mlcd.steps=50")
    args = parser.parse_args(argv)
    if args.n < GRID_ROWS:
        parser.error(f"--n must be at least {GRID_ROWS} (the grid shows {GRID_ROWS} prompts)")
    paths = run_demo(args.out, args.n, args.seed, args.overrides)
    print("[demo] wrote:")
    for name, path in paths.items():
        print(f"  {name:12s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
