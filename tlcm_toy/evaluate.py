"""Score samplers on the toy: one row of metrics per (model, scheduler, steps, guidance).

Every sampler draws the same N prompts (labels of a held-out real set, English and Chinese alternating)
from the same noise, and the frozen evaluator scores the images against that real set (FD, KID), against
the reference sampler's images (FD-to-teacher: the teacher's DDIM-25 + CFG) and by attribute accuracy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import generate, prompts_for
from .evaluator import evaluate_images
from .metrics import attribute_accuracy, frechet_distance, kernel_inception_distance
from .sample import sample

REAL_SEED = 424_242
COLUMNS = ("acc_all", "acc_shape", "acc_colour", "acc_texture", "acc_position", "fd", "kid", "fd_teacher25",
           "unet_evals", "s_per_image")


@dataclass(frozen=True)
class Sampler:
    """A model (pipeline) with one sampling configuration."""

    label: str
    pipe: Any
    steps: int
    guidance: float = 1.0
    scheduler: str = "ddim"      # ddim (trailing) | tlcm

    @property
    def unet_evals(self) -> int:
        return self.steps * (2 if self.guidance > 1 else 1)


def eval_prompts(n: int):
    """The held-out real set and its prompts (en/zh alternating)."""
    real = generate(n, REAL_SEED)
    return real, prompts_for(real.labels, np.resize(np.array(["en", "zh"]), n))


def score_samplers(samplers: list[Sampler], reference: Sampler, evaluator, n: int, seed: int
                   ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Metrics per sampler label for one noise seed, and the first 16 images of each (for grids)."""
    real, prompts = eval_prompts(n)
    real_features, _ = evaluate_images(evaluator, real.images)
    shown = samplers if reference.label in {s.label for s in samplers} else [reference, *samplers]
    ordered = [reference] + [s for s in shown if s.label != reference.label]      # the reference goes first
    features, rows, previews = {}, {}, {}
    for s in ordered:
        start = time.perf_counter()
        images = sample(s.pipe, prompts, s.steps, s.guidance, seed, scheduler=s.scheduler)
        elapsed = time.perf_counter() - start
        features[s.label], predicted = evaluate_images(evaluator, images)
        rows[s.label] = dict(
            steps=s.steps, guidance=s.guidance, scheduler=s.scheduler,
            **{f"acc_{k}": v for k, v in attribute_accuracy(predicted, real.labels).items()},
            fd=frechet_distance(features[s.label], real_features),
            kid=kernel_inception_distance(features[s.label], real_features),
            fd_teacher25=frechet_distance(features[s.label], features[reference.label]),
            unet_evals=s.unet_evals, s_per_image=elapsed / n)
        previews[s.label] = images[:16]
    return {s.label: rows[s.label] for s in shown}, previews


def summarise(per_unit: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float | None]]]:
    """[mean, sample standard deviation (ddof = 1)] over units (noise seeds, or training runs) for every
    row and column; the deviation is None for a single unit."""
    def spread(values: list[float]) -> float | None:
        return float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {name: {c: [float(np.mean([u[name][c] for u in per_unit])), spread([u[name][c] for u in per_unit])]
                   for c in COLUMNS} for name in per_unit[0]}


def mean_over_seeds(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """One training run's rows averaged over its noise seeds: the unit of a spread over training runs."""
    return {name: {c: float(np.mean([r[name][c] for r in per_seed])) for c in COLUMNS} for name in per_seed[0]}


def markdown_table(summary: dict[str, dict[str, list[float | None]]]) -> str:
    """Mean ± sample standard deviation per cell (the mean alone where there was one unit)."""
    lines = ["| sampler | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in summary.items():
        cells = [f"{m:.3g}" if s is None else f"{m:.3g} ± {s:.2g}" for m, s in row.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)   # Student t, df = 1..10


def t_975(df: int) -> float:
    """The two-sided 95% Student t quantile (1.96 beyond the table; 0 for no degrees of freedom)."""
    return T_975[df - 1] if 0 < df <= len(T_975) else 1.96 if df else 0.0


def clearly_below(a: list, b: list, n_a: int, n_b: int) -> bool:
    """Mean a below mean b beyond a 95% t-interval of the difference: standard error from both sample
    stds, degrees of freedom min(n_a, n_b) − 1 (never more than Welch's, so never optimistic; a row
    without a spread counts as exact and leaves the other side's). Few seeds make this strict on purpose."""
    se = ((a[1] or 0.0) ** 2 / n_a + (b[1] or 0.0) ** 2 / n_b) ** 0.5
    sizes = [n for n, row in ((n_a, a), (n_b, b)) if row[1] is not None and n > 1]
    return a[0] + t_975(min(sizes) - 1 if sizes else 0) * se < b[0]


def paired_difference(per_run: list[dict[str, dict[str, float]]], a: str, b: str) -> dict[str, list]:
    """Row a − row b within each training run (same seed, same start, same prompts and noise), then per
    column [mean, sample std (ddof = 1), half-width of the 95% t-interval of the mean] over runs."""
    n = len(per_run)
    out = {}
    for c in COLUMNS:
        d = [run[a][c] - run[b][c] for run in per_run]
        sd = float(np.std(d, ddof=1)) if n > 1 else None
        out[c] = [float(np.mean(d)), sd, None if sd is None else t_975(n - 1) * sd / n ** 0.5]
    return out
