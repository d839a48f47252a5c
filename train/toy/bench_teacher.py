"""Does the few-step problem exist on the toy? The teacher's own DDIM (trailing) at 2/4/8 vs 25 steps.

Every configuration samples the same N prompts (labels of a held-out real set, English and Chinese
alternating) from the same noise (per seed), and is scored by the frozen evaluator against that real set
(FD, KID), against the teacher's DDIM-25 + CFG samples (FD-to-teacher), and by attribute accuracy.
Writes ``bench/results/toy_teacher.md`` + ``.json``: ``python -m train.toy.bench_teacher``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data import Batch, generate, prompts_for
from .evaluator import DEFAULT_WEIGHTS as EVALUATOR_WEIGHTS
from .evaluator import evaluate_images, file_sha256, load_evaluator
from .metrics import attribute_accuracy, frechet_distance, kernel_inception_distance
from .sample import sample
from .sanity import score
from .vae import reconstruct

DEFAULT_TEACHER = Path(__file__).parent / "weights" / "teacher"
REAL_SEED = 424_242
REFERENCE = (25, 3.0)    # (steps, guidance) of the FD-to-teacher reference
COLUMNS = ("acc_all", "acc_shape", "acc_colour", "acc_texture", "acc_position", "fd", "kid", "fd_teacher25",
           "unet_evals", "s_per_image")


def ensure_tokenizers(folder: str | Path) -> Path:
    """Write SDXL's two CLIP tokenizers into ``folder`` if absent: they are generated from open-clip-torch's
    BPE file (identical ids), so the committed teacher carries only its weights (size budget)."""
    from tlcm.models.clip_tokenizer import write_clip_tokenizer
    folder = Path(folder)
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        if not (folder / name / "vocab.json").is_file():
            write_clip_tokenizer(folder / name, pad_token=pad)
    return folder


def load_teacher(path: str | Path = DEFAULT_TEACHER):
    from tlcm.models import load_sdxl_pipeline
    pipe = load_sdxl_pipeline(ensure_tokenizers(path), device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, model, n: int, seed: int, configs: list[tuple[int, float]]) -> dict[str, dict[str, float]]:
    """Metrics of every (steps, guidance) configuration for one noise seed."""
    real = generate(n, REAL_SEED)
    prompts = prompts_for(real.labels, np.resize(np.array(["en", "zh"]), n))
    real_features, _ = evaluate_images(model, real.images)
    features, rows = {}, {}
    for steps, guidance in sorted(configs, key=lambda c: c != REFERENCE):   # reference first
        start = time.perf_counter()
        images = sample(pipe, prompts, steps, guidance, seed)
        elapsed = time.perf_counter() - start
        features[(steps, guidance)], predicted = evaluate_images(model, images)
        rows[f"DDIM-{steps} w={guidance:g}"] = dict(
            steps=steps, guidance=guidance,
            **{f"acc_{k}": v for k, v in attribute_accuracy(predicted, real.labels).items()},
            fd=frechet_distance(features[(steps, guidance)], real_features),
            kid=kernel_inception_distance(features[(steps, guidance)], real_features),
            fd_teacher25=frechet_distance(features[(steps, guidance)], features[REFERENCE]),
            unet_evals=steps * (2 if guidance > 1 else 1), s_per_image=elapsed / n)
    return rows


def summarise(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """[mean, std] over seeds for every configuration and column."""
    return {name: {c: [float(np.mean([r[name][c] for r in per_seed])), float(np.std([r[name][c] for r in per_seed]))]
                   for c in COLUMNS} for name in per_seed[0]}


def markdown(record: dict) -> str:
    head = (f"# Toy teacher: its own few-step sampling vs 25 steps\n\n`{record['command']}`\n\n"
            f"N = {record['n']} prompts (labels of real set seed {REAL_SEED}, en/zh alternating), noise seeds "
            f"{record['seeds']} (mean ± std over seeds); DDIM with trailing timesteps, CFG with zero "
            f"unconditional embeddings (w=1: no CFG). Evaluator `{record['evaluator_sha256'][:16]}…`; FD/KID "
            f"against N real images on its 128-d features; fd_teacher25 = FD to DDIM-25 w=3 samples. "
            f"Real-vs-real floor at this N: FD {record['real_floor']['fd']:.3g}, KID "
            f"{record['real_floor']['kid']:.3g}. VAE round trip of the real set (the ceiling): FD "
            f"{record['vae_reconstruction']['fd']:.3g}, KID {record['vae_reconstruction']['kid']:.3g}, "
            f"accuracy all/texture {record['vae_reconstruction']['acc_all']:.3g}/"
            f"{record['vae_reconstruction']['acc_texture']:.3g}. Teacher trained {record['teacher']['steps']} steps "
            f"({record['teacher']['train_seconds']} s). s_per_image: CPU, {torch.get_num_threads()} threads, "
            f"shared cores.\n\n")
    table = ["| sampler | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in record["summary"].items():
        cells = [f"{m:.3g}" if len(record["seeds"]) == 1 else f"{m:.3g} ± {s:.2g}" for m, s in row.values()]
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(table) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 25])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/toy_teacher"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pipe, model = load_teacher(args.teacher), load_evaluator()
    configs = sorted({(s, g) for s in args.steps for g in args.guidance} | {REFERENCE})
    per_seed = [run(pipe, model, args.n, seed, configs) for seed in args.seeds]
    real = generate(args.n, REAL_SEED)
    floor_a, _ = evaluate_images(model, real.images)
    floor_b, _ = evaluate_images(model, generate(args.n, REAL_SEED + 1).images)
    recon = score(model, floor_a, Batch(reconstruct(pipe.vae, real.images), real.labels))
    record = dict(command=" ".join(["python -m train.toy.bench_teacher", *(argv or sys.argv[1:])]),
                  n=args.n, seeds=args.seeds, evaluator_sha256=file_sha256(EVALUATOR_WEIGHTS),
                  teacher=json.loads((args.teacher / "training.json").read_text()),
                  real_floor=dict(fd=frechet_distance(floor_a, floor_b), kid=kernel_inception_distance(floor_a, floor_b)),
                  vae_reconstruction=recon,
                  summary=summarise(per_seed), per_seed=per_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(record), encoding="utf-8")
    print(markdown(record))


if __name__ == "__main__":
    main()
