"""Does the evaluator's metric set separate real from degraded images? (docs/eval.md §5 sanity check)

Degradations of a real set: blur (keeps the labels, so accuracy should stay high while FD/KID rise),
additive noise, and mode collapse (a few images repeated: accuracy fine, FD/KID high). Writes
``bench/results/toy_evaluator.md`` + ``.json``: ``python -m tlcm_toy.sanity``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .data import Batch, generate
from .evaluator import DEFAULT_WEIGHTS, HELD_OUT_SEED, evaluate_images, file_sha256, load_evaluator
from .metrics import attribute_accuracy, frechet_distance, kernel_inception_distance


def blur(images: np.ndarray, radius: int = 1) -> np.ndarray:
    """Box blur of width 2·radius + 1 (replicate padding)."""
    x = torch.as_tensor(images)
    k = 2 * radius + 1
    padded = torch.nn.functional.pad(x, (radius,) * 4, mode="replicate")
    return torch.nn.functional.avg_pool2d(padded, k, stride=1).numpy()


def add_noise(images: np.ndarray, std: float, seed: int) -> np.ndarray:
    return np.clip(images + np.random.default_rng(seed).normal(0.0, std, images.shape), 0, 1).astype(np.float32)


def collapse(batch: Batch, keep: int) -> Batch:
    """Mode collapse: the first ``keep`` images (and labels) tiled to the original size."""
    index = np.arange(len(batch)) % keep
    return Batch(batch.images[index], {k: v[index] for k, v in batch.labels.items()})


def score(model, reference_features: np.ndarray, batch: Batch) -> dict[str, float]:
    """FD, KID against the reference features and attribute accuracy of ``batch``."""
    features, predicted = evaluate_images(model, batch.images)
    return dict(fd=frechet_distance(features, reference_features),
                kid=kernel_inception_distance(features, reference_features),
                **{f"acc_{k}": v for k, v in attribute_accuracy(predicted, batch.labels).items()})


def degraded_sets(n: int, seed: int) -> dict[str, Batch]:
    real = generate(n, seed)
    return {"real (independent)": real,
            "blurred 3x3": Batch(blur(real.images), real.labels),
            "noisy std 0.1": Batch(add_noise(real.images, 0.1, seed), real.labels),
            "noisy std 0.3": Batch(add_noise(real.images, 0.3, seed), real.labels),
            "collapsed (10 images)": collapse(real, 10)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/toy_evaluator"),
                        help="results (.md + .json); the committed ones are bench/results/toy_evaluator")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_evaluator(args.weights)
    reference, _ = evaluate_images(model, generate(args.n, HELD_OUT_SEED).images)
    rows = {name: score(model, reference, batch) for name, batch in degraded_sets(args.n, args.seed).items()}
    record = dict(command="python -m tlcm_toy.sanity", n=args.n, seed=args.seed, reference_seed=HELD_OUT_SEED,
                  evaluator_sha256=file_sha256(args.weights),
                  held_out=json.loads(args.weights.with_suffix(".json").read_text()), rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    cols = ["fd", "kid", "acc_shape", "acc_colour", "acc_texture", "acc_position", "acc_all"]
    lines = ["# Toy evaluator: held-out accuracy and metric sanity check", "",
             f"`{record['command']}`; N = {args.n} per set (seed {args.seed}) against N = {args.n} held-out real "
             f"images (seed {HELD_OUT_SEED}); evaluator sha256 `{record['evaluator_sha256'][:16]}…`; FD/KID on "
             f"its 128-d penultimate features, KID = unbiased MMD² with the cubic polynomial kernel.", "",
             "| set | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{r[c]:.4g}" for c in cols) + " |" for name, r in rows.items()]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
