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
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from tlcm.cli import silence_torchvision_fallback_notice
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


# Seconds per stage of a default run (toy.yaml, N = 250; 9 min 49 s in all) on a 2-core CPU shared with light
# other work; a run scales them by how fast it trains here (see DemoProgress).
REFERENCE_SECONDS = dict(setup=10.0, step=2.1, export=5.0, evaluation=60.0)
REFERENCE_BATCH, REFERENCE_N = 32, 250
STAGES = (("setup", "setup: loading the toy teacher into the trainer, encoding its prompts"),
          ("training", "training the TLCM LoRA, {steps} steps"),
          ("export", "export: checkpoint, sample grid, LoRA files, the LoRA merged into the teacher"),
          ("evaluation", "evaluation: {samplers} samplers x {n} prompts, scored by the frozen evaluator"))


def _echo(line: str) -> None:
    """A line between the trainer's progress bar redraws, shown at once even when stdout is a file or pipe."""
    tqdm.write(line)
    sys.stdout.flush()


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class DemoProgress:
    """Prints ``[demo] step k/4 of the demo: <what>, elapsed m:ss, ETA ~m:ss`` at each stage's start and every
    tenth of training, so that a ten-minute run says where it stands as a whole, not only within a stage.

    Training's remaining time comes from the trainer's own step count (its ``on_phase`` hook hears one
    "optimizer" phase per step) and its measured time per step. A stage not yet run is estimated from
    REFERENCE_SECONDS, scaled by this machine's measured time per training step over the reference's (the
    reference step time scaled by the batch size) and, for the evaluation, by N."""

    def __init__(self, total_steps: int, batch: int, n: int, clock=time.perf_counter, echo=_echo):
        self.total_steps, self.n, self.clock, self.echo = total_steps, n, clock, echo
        self.reference_step = REFERENCE_SECONDS["step"] * batch / REFERENCE_BATCH
        self.started = self.stage_started = clock()
        self.stage, self.steps_done = -1, 0
        self.seconds: dict[str, float] = {}       # stage name -> measured seconds, once it has ended

    def _speed(self) -> float:
        if "training" in self.seconds and self.steps_done:
            per_step = self.seconds["training"] / self.steps_done
        elif self.stage == 1 and self.steps_done:
            per_step = (self.clock() - self.stage_started) / self.steps_done
        else:
            return 1.0
        return per_step / self.reference_step

    def eta(self) -> float:
        """Seconds left in the whole demo."""
        f = self._speed()
        left = [REFERENCE_SECONDS["setup"] * f, (self.total_steps - self.steps_done) * self.reference_step * f,
                REFERENCE_SECONDS["export"] * f, REFERENCE_SECONDS["evaluation"] * f * self.n / REFERENCE_N]
        if self.stage != 1:
            left[self.stage] = max(left[self.stage] - (self.clock() - self.stage_started), 0.0)
        return sum(left[self.stage:])

    def _line(self, what: str) -> None:
        self.echo(f"[demo] step {self.stage + 1}/{len(STAGES)} of the demo: {what}, elapsed "
                  f"{_clock(self.clock() - self.started)}, ETA ~{_clock(self.eta())}")

    def _close_stage(self) -> None:
        if self.stage >= 0:
            self.seconds[STAGES[self.stage][0]] = self.clock() - self.stage_started

    def enter(self, stage: int, **details) -> None:
        """Start ``stage`` (0-3) and say so (``details`` fill its text); entering the current or an earlier
        stage does nothing."""
        if stage <= self.stage:
            return
        self._close_stage()
        self.stage, self.stage_started = stage, self.clock()
        self._line(STAGES[stage][1].format(steps=self.total_steps, n=self.n, **details))

    def on_phase(self, name: str) -> None:
        """The trainer's phase hook."""
        if name != "optimizer":
            return
        self.steps_done += 1
        if self.steps_done >= self.total_steps:
            self.enter(2)            # the trainer now saves, samples and exports
        elif self.steps_done % max(self.total_steps // 10, 1) == 0:
            self._line(f"training step {self.steps_done}/{self.total_steps}")

    def finish(self) -> dict[str, float]:
        """Ends the last stage, says the total; returns the seconds of every stage."""
        self._close_stage()
        self.stage = len(STAGES)
        times = ", ".join(f"{name} {_clock(t)}" for name, t in self.seconds.items())
        self.echo(f"[demo] done in {_clock(self.clock() - self.started)} ({times})")
        return {name: round(t, 1) for name, t in self.seconds.items()}


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
    progress = DemoProgress(config.total_steps, config.train.batch_size, n)
    progress.enter(0)
    started = time.perf_counter()
    trainer = Trainer(config, on_phase=progress.on_phase)
    progress.enter(1)
    result = trainer.run()
    train_seconds = time.perf_counter() - started
    progress.enter(2)                 # already entered at the last step, unless the run stopped early
    teacher, student = load_teacher(), load_teacher()
    apply_loras(student, [(str(result.lora_files["kohya"]), 1.0)])
    reference, compared = samplers(teacher, student)
    progress.enter(3, samplers=len(compared))
    rows, previews = score_samplers(compared, reference, load_evaluator(), n, seed)
    stage_seconds = progress.finish()
    summary = summarise([rows])
    record = dict(command="python run.py demo", train_seconds=round(train_seconds, 1), stage_seconds=stage_seconds,
                  steps=result.step, mlcd_steps=config.mlcd.steps, lcd_steps=config.lcd.steps,
                  batch=config.train.batch_size, final_losses=result.losses[-5:], n=n, seed=seed, rows=rows,
                  lora_files={k: str(v) for k, v in result.lora_files.items()})
    table = (f"# TLCM demo: toy teacher distilled in {train_seconds / 60:.1f} min on this CPU\n\n"
             f"{result.step} steps ({config.mlcd.steps} MLCD + {config.lcd.steps} LCD) at batch "
             f"{config.train.batch_size}; N = {n} held-out prompts, noise seed {seed}; FD/KID against real toy "
             "images, fd_teacher25 = FD to the teacher's DDIM-25 + CFG samples (evaluator features). "
             "One training run and one noise seed, so no spread: the benchmark "
             "(bench/results/toy_table1.md) repeats this run over several training seeds.\n\n"
             + markdown_table(summary))
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
    silence_torchvision_fallback_notice()
    if args.n < GRID_ROWS:
        parser.error(f"--n must be at least {GRID_ROWS} (the grid shows {GRID_ROWS} prompts)")
    paths = run_demo(args.out, args.n, args.seed, args.overrides)
    print("[demo] wrote:")
    for name, path in paths.items():
        print(f"  {name:12s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
