"""Does the few-step problem exist on the toy? The teacher's own DDIM (trailing) at 2/4/8 vs 25 steps.

Every configuration samples the same N prompts (labels of a held-out real set, English and Chinese
alternating) from the same noise (per seed), and is scored by the frozen evaluator against that real set
(FD, KID), against the teacher's DDIM-25 + CFG samples (FD-to-teacher), and by attribute accuracy.
The committed results: ``python -m tlcm_toy.bench_teacher --out bench/results/toy_teacher``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from .data import Batch, generate
from .evaluate import REAL_SEED, Sampler, markdown_table, score_samplers, summarise
from .evaluator import DEFAULT_WEIGHTS as EVALUATOR_WEIGHTS
from .evaluator import evaluate_images, file_sha256, load_evaluator
from .metrics import frechet_distance, kernel_inception_distance
from .sanity import score
from .vae import reconstruct

DEFAULT_TEACHER = Path(__file__).parent / "weights" / "teacher"
REFERENCE = (25, 3.0)    # (steps, guidance) of the FD-to-teacher reference


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def ensure_tokenizers(folder: str | Path, cache: str | Path | None = None) -> Path:
    """A folder of the teacher with SDXL's two CLIP tokenizers: they are generated from open-clip-torch's
    BPE file (identical ids), so the committed teacher carries only its weights (size budget). They are
    written into ``folder`` itself, or, where it is read-only (a system-wide install), into a cache folder
    that links the teacher's other parts (``cache``, default ``$TLCM_CACHE`` or ~/.cache/tlcm)."""
    from tlcm.models.clip_tokenizer import write_clip_tokenizer
    folder = Path(folder).resolve()
    tokenizers = (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!"))
    if all((folder / name / "vocab.json").is_file() for name, _ in tokenizers):
        return folder
    target = folder
    if not writable(folder):
        root = Path(cache or os.environ.get("TLCM_CACHE") or Path.home() / ".cache" / "tlcm")
        target = root / f"toy-teacher-{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"
        target.mkdir(parents=True, exist_ok=True)
        for part in folder.iterdir():
            link = target / part.name
            if part.name not in dict(tokenizers) and not link.exists():
                link.symlink_to(part)
    for name, pad in tokenizers:
        if not (target / name / "vocab.json").is_file():
            write_clip_tokenizer(target / name, pad_token=pad)
    return target


def load_teacher(path: str | Path = DEFAULT_TEACHER):
    from tlcm.models import load_sdxl_pipeline
    pipe = load_sdxl_pipeline(ensure_tokenizers(path), device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, model, n: int, seed: int, configs: list[tuple[int, float]]) -> dict[str, dict[str, float]]:
    """Metrics of every (steps, guidance) configuration for one noise seed."""
    def sampler(steps: int, guidance: float) -> Sampler:
        return Sampler(f"DDIM-{steps} w={guidance:g}", pipe, steps, guidance)
    rows, _ = score_samplers([sampler(*c) for c in configs], sampler(*REFERENCE), model, n, seed)
    return rows


def markdown(record: dict) -> str:
    head = (f"# Toy teacher: its own few-step sampling vs 25 steps\n\n`{record['command']}`\n\n"
            f"N = {record['n']} prompts (labels of real set seed {REAL_SEED}, en/zh alternating), noise seeds "
            f"{record['seeds']} (mean ± sample std over seeds, ddof = 1); DDIM with trailing timesteps, CFG with zero "
            f"unconditional embeddings (w=1: no CFG). Evaluator `{record['evaluator_sha256'][:16]}…`; FD/KID "
            f"against N real images on its 128-d features; fd_teacher25 = FD to DDIM-25 w=3 samples. "
            f"Real-vs-real floor at this N: FD {record['real_floor']['fd']:.3g}, KID "
            f"{record['real_floor']['kid']:.3g}. VAE round trip of the real set (the ceiling): FD "
            f"{record['vae_reconstruction']['fd']:.3g}, KID {record['vae_reconstruction']['kid']:.3g}, "
            f"accuracy all/texture {record['vae_reconstruction']['acc_all']:.3g}/"
            f"{record['vae_reconstruction']['acc_texture']:.3g}. Teacher trained {record['teacher']['steps']} steps "
            f"({record['teacher']['train_seconds']} s). s_per_image: CPU, {torch.get_num_threads()} threads, "
            f"shared cores.\n\n")
    return head + markdown_table(record["summary"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 25])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/toy_teacher"),
                        help="results (.md + .json); the committed ones are bench/results/toy_teacher")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pipe, model = load_teacher(args.teacher), load_evaluator()
    configs = sorted({(s, g) for s in args.steps for g in args.guidance} | {REFERENCE})
    per_seed = [run(pipe, model, args.n, seed, configs) for seed in args.seeds]
    real = generate(args.n, REAL_SEED)
    floor_a, _ = evaluate_images(model, real.images)
    floor_b, _ = evaluate_images(model, generate(args.n, REAL_SEED + 1).images)
    recon = score(model, floor_a, Batch(reconstruct(pipe.vae, real.images), real.labels))
    record = dict(command=" ".join(["python -m tlcm_toy.bench_teacher", *(argv or sys.argv[1:])]),
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
