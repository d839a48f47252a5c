"""A small preference scorer for the toy world, standing in for MPS in toy distillation runs.

It must never be the frozen evaluator (a rewarded metric stops measuring, docs/eval.md §5): different
architecture (space-to-depth stem, GroupNorm/SiLU convolutions, no batch norm), different objective (score
regression on image-prompt pairs, not attribute classification), different seeds and data streams.

Score s(x, c) = ⟨f(x), g(c)⟩, the dot product of an image embedding (CNN) and a prompt embedding (a learned
base vector plus one learned vector per attribute value; en and zh prompts are parsed into the same
attribute ids, so both languages score identically). Trained by regression on procedural images to the
calibration targets, in score points:

- 20 for a clean image with its own prompt (MATCH; above the paper's margin s0 = 16, so a right and clean
  student sample satisfies Eq. 11's positive hinge and gives no gradient);
- minus 20 per wrong attribute (PER_WRONG_ATTRIBUTE: one wrong attribute scores about 0, an unrelated
  prompt well below 0, so the negative hinge max(s(x, c_neg), 0) is inactive for distinct prompts);
- minus up to 16 for degradation (MAX_DEGRADATION x severity in [0, 1]): Gaussian blur σ = 0.3 + 1.2 sev,
  additive Gaussian noise std = 0.03 + 0.17 sev, or contrast reduced towards the image mean by a factor
  1 − 0.7 sev; a fully degraded image with the right prompt scores about 4, below s0.

A quarter of the clean training images are round trips through the toy teacher's VAE: the scorer only
ever judges VAE decodes, so the decoder's own softness must count as clean (without this the round trip
of real images scored 16.4 on average, a third of them under s0; figures in bench/results/toy_scorer.md).

Reproduce the committed weights (about 90 s of CPU on one thread; deterministic):
``nice python -m tlcm_toy.scorer --out tlcm_toy/weights/scorer.safetensors``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlcm.files import atomic_write_text
from tlcm_train.preference.scorer import ScorerPlugin

from .data import ATTRIBUTES, LANGUAGES, SIZE, ZH, generate, prompt, prompts_for
from .vae import reconstruct

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "scorer.safetensors"
TEACHER = DEFAULT_WEIGHTS.parent / "teacher"
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "toy_scorer.md"
EMBED = 64
MATCH, PER_WRONG_ATTRIBUTE, MAX_DEGRADATION = 20.0, 20.0, 16.0
DEGRADATIONS = ("blur", "noise", "contrast")
TRAIN_SEED = 4_321                # evaluator: 1234; held-out sets use other seeds
HELD_OUT_SEED = 246_810
HELD_OUT_SEVERITY = 0.5           # the pairwise clean-vs-degraded check: blur σ 0.9, noise std 0.115, contrast x0.65
NAMES = tuple(ATTRIBUTES)         # attribute order of the id tuples
VAE_POOL = 4096                   # toy-VAE round trips of real images, a quarter of each clean batch
THREADS = 1                       # small convolutions: a second thread only adds sync waits on shared cores

_PATTERNS = {name: [(re.compile(rf"\b{re.escape(en)}\b"), re.compile(re.escape(zh)))
                    for en, zh in zip(values, ZH[name])] for name, values in ATTRIBUTES.items()}


def parse_prompt(text: str) -> tuple[int, ...]:
    """Attribute ids (shape, colour, texture, position) named by a toy prompt in English or Chinese; a
    prompt that does not name exactly one value of every attribute is refused (nothing to score)."""
    lowered = text.lower()
    ids = []
    for name in NAMES:
        hits = [i for i, (en, zh) in enumerate(_PATTERNS[name]) if en.search(lowered) or zh.search(text)]
        if len(hits) != 1:
            raise ValueError(f"toy scorer: prompt {text!r} names {len(hits)} {name} values (needs exactly one of "
                             f"{ATTRIBUTES[name]} / {ZH[name]})")
        ids.append(hits[0])
    return tuple(ids)


class ToyScorer(nn.Module):
    """Images (B, 3, 32, 32) in [0, 1] and toy prompts -> scores (B,), differentiable w.r.t. the images."""

    def __init__(self) -> None:
        super().__init__()
        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        # space-to-depth keeps every pixel of the 2-px textures at 7x less compute than a full-resolution
        # first convolution; 16 -> 8 -> 4 px, then flatten (keeps the quadrant)
        self.image = nn.Sequential(nn.PixelUnshuffle(2), *block(12, 32, 1), *block(32, 48, 2), *block(48, 64, 2),
                                   nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.SiLU(), nn.Linear(128, EMBED))
        self.words = nn.ModuleDict({name: nn.Embedding(len(values), EMBED) for name, values in ATTRIBUTES.items()})
        self.base = nn.Parameter(torch.zeros(EMBED))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1:] != (3, SIZE, SIZE):
            raise ValueError(f"toy scorer takes (B, 3, {SIZE}, {SIZE}) images, got {tuple(images.shape)}")
        return self.image(images * 2.0 - 1.0)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, 4) attribute ids -> prompt embeddings (B, EMBED)."""
        return self.base + sum(self.words[name](ids[:, i]) for i, name in enumerate(NAMES))

    def score_ids(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return (self.embed_images(images) * self.embed_ids(ids)).sum(-1)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        ids = torch.tensor([parse_prompt(p) for p in prompts], device=images.device)
        return self.score_ids(images.to(self.base.dtype), ids).float()


def load_toy_scorer(path: str | Path = DEFAULT_WEIGHTS, dtype: torch.dtype = torch.float32) -> ToyScorer:
    from safetensors.torch import load_file
    model = ToyScorer()
    model.load_state_dict(load_file(str(path)))
    return model.to(dtype).eval().requires_grad_(False)


def _tensor_names() -> set[str]:
    with torch.device("meta"):
        return set(ToyScorer().state_dict())


TOY_SCORER = ScorerPlugin("toy", load_toy_scorer, _tensor_names, missing_hint=(
    "The toy scorer is committed as tlcm_toy/weights/scorer.safetensors; to rebuild it run "
    "`python -m tlcm_toy.scorer --out tlcm_toy/weights/scorer.safetensors`."))
PLUGIN = "tlcm_toy.scorer:TOY_SCORER"        # the value of the trainer's ``mps.scorer`` for this scorer


# --- degradations and targets --------------------------------------------------------------------------

def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur (7 taps, reflect padding)."""
    n, c, h, w = images.shape
    taps = torch.arange(-3, 4, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(-1, keepdim=True)).repeat_interleave(c, 0)            # (n*c, 7)
    x = images.reshape(1, n * c, h, w)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, 7), groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="reflect"), kernel.view(n * c, 1, 7, 1), groups=n * c)
    return x.reshape(n, c, h, w)


def degrade(images: torch.Tensor, kind: torch.Tensor, severity: torch.Tensor,
            generator: torch.Generator) -> torch.Tensor:
    """Apply degradation ``kind`` (index into DEGRADATIONS) at ``severity`` in [0, 1], per sample."""
    sev = severity.view(-1, 1, 1, 1)
    blurred = _gaussian_blur(images, 0.3 + 1.2 * severity)
    noisy = (images + (0.03 + 0.17 * sev) * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    flat = mean + (images - mean) * (1.0 - 0.7 * sev)
    k = kind.view(-1, 1, 1, 1)
    return torch.where(k == 0, blurred, torch.where(k == 1, noisy, flat))


def change_attributes(ids: torch.Tensor, wrong: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Copies of ``ids`` (B, 4) with ``wrong[i]`` distinct attributes moved to another random value."""
    sizes = torch.tensor([len(ATTRIBUTES[name]) for name in NAMES])
    order = torch.rand(ids.shape, generator=generator).argsort(dim=1)
    changed = order < wrong.view(-1, 1)                       # a random subset of `wrong` attributes
    shift = 1 + (torch.rand(ids.shape, generator=generator) * (sizes - 1)).long()
    return torch.where(changed, (ids + shift) % sizes, ids)


def target(wrong: torch.Tensor, severity: torch.Tensor) -> torch.Tensor:
    return MATCH - PER_WRONG_ATTRIBUTE * wrong.float() - MAX_DEGRADATION * severity


def label_ids(labels: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.as_tensor(np.stack([labels[name] for name in NAMES], axis=1), dtype=torch.long)


# --- training and held-out figures ---------------------------------------------------------------------

def toy_vae():
    """The toy teacher's AutoencoderKL (the decoder every distilled toy sample goes through)."""
    from diffusers import AutoencoderKL
    return AutoencoderKL.from_pretrained(TEACHER / "vae").eval()


def train_scorer(steps: int, batch: int, seed: int, lr: float, vae, log=print) -> ToyScorer:
    """Fresh procedural images every step; each image and a degraded copy are scored against its own
    prompt and a prompt with 1-4 wrong attributes (one wrong most often: the hardest case). A quarter of
    the clean images are toy-VAE round trips (from a pool of VAE_POOL): the scorer only ever judges VAE
    decodes, so the decoder's own softness must count as clean, not as blur."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    pool_data = generate(VAE_POOL, seed + 2)
    pool, pool_ids = torch.as_tensor(reconstruct(vae, pool_data.images)), label_ids(pool_data.labels)
    model = ToyScorer()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    wrong_probs = torch.tensor([0.55, 0.15, 0.15, 0.15])       # 1, 2, 3, 4 wrong attributes
    model.train()
    for step in range(steps):
        data = generate(batch - batch // 4, seed * 7_907 + step)
        drawn = torch.randint(0, VAE_POOL, (batch // 4,), generator=gen)
        clean = torch.cat([torch.as_tensor(data.images), pool[drawn]])
        ids = torch.cat([label_ids(data.labels), pool_ids[drawn]])
        severity = torch.rand(batch, generator=gen)
        degraded = degrade(clean, torch.randint(0, len(DEGRADATIONS), (batch,), generator=gen), severity, gen)
        wrong = 1 + torch.multinomial(wrong_probs, 2 * batch, replacement=True, generator=gen)
        other = change_attributes(ids.repeat(2, 1), wrong, gen)
        images = model.embed_images(torch.cat([clean, degraded]))                 # (2B, E): clean, degraded
        scores = torch.cat([(images * model.embed_ids(ids).repeat(2, 1)).sum(-1),   # own prompt
                            (images * model.embed_ids(other)).sum(-1)])            # wrong prompt
        sev = torch.cat([torch.zeros(batch), severity, torch.zeros(batch), severity])
        targets = target(torch.cat([torch.zeros(2 * batch), wrong]), sev)
        loss = ((scores - targets) / PER_WRONG_ATTRIBUTE).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"toy scorer step {step} loss {loss.item():.4f}", flush=True)
    return model.eval()


def _prompts(ids: torch.Tensor, languages: np.ndarray) -> list[str]:
    return [prompt(*map(int, row), language=str(lang)) for row, lang in zip(ids, languages)]


def _summary(scores: torch.Tensor) -> dict[str, float]:
    """Mean, std and the share at or above the margin s0 = 16 (Eq. 11's positive hinge satisfied)."""
    return dict(mean=float(scores.mean()), std=float(scores.std()), share_ge_16=float((scores >= 16.0).float().mean()))


@torch.no_grad()
def held_out_figures(model: ToyScorer, n: int, seed: int) -> dict[str, dict[str, float]]:
    """Pairwise accuracies and score levels on fresh images, prompts alternating en/zh (through the text
    path). ``unrelated`` is the prompt of the next image, as the preference technique's negatives."""
    data = generate(n, seed)
    gen = torch.Generator().manual_seed(seed)
    clean, ids = torch.as_tensor(data.images), label_ids(data.labels)
    languages = np.resize(np.array(LANGUAGES), n)
    own = model(clean, _prompts(ids, languages))
    one_wrong = model(clean, _prompts(change_attributes(ids, torch.ones(n, dtype=torch.long), gen), languages))
    rolled = ids.roll(1, 0)
    distinct = (rolled != ids).any(1)
    unrelated = model(clean, _prompts(rolled, languages))
    pairwise = {"own > one wrong attribute": float((own > one_wrong).float().mean()),
                "own > unrelated (next image's)": float((own > unrelated)[distinct].float().mean())}
    levels = {"clean, own prompt": _summary(own), "clean, one wrong attribute": _summary(one_wrong),
              "clean, unrelated prompt": _summary(unrelated[distinct])}
    for k, kind in enumerate(DEGRADATIONS):
        for sev in (HELD_OUT_SEVERITY, 1.0):
            degraded = degrade(clean, torch.full((n,), k), torch.full((n,), sev), gen)
            scores = model(degraded, _prompts(ids, languages))
            levels[f"{kind} sev {sev:g}, own prompt"] = _summary(scores)
            if sev == HELD_OUT_SEVERITY:
                pairwise[f"clean > {kind} sev {sev:g}"] = float((own > scores).float().mean())
    return {"pairwise_accuracy": pairwise, "score_levels": levels}


@torch.no_grad()
def generated_figures(model: ToyScorer, n: int, seed: int) -> dict[str, dict[str, float]]:
    """Score levels where the scorer is used: the toy VAE's round trip of real images (the ceiling of any
    latent sample) and the toy teacher's own samples (25-step CFG vs 2-step DDIM)."""
    from .bench_teacher import load_teacher
    from .sample import sample
    pipe = load_teacher()
    data = generate(n, seed)
    prompts = prompts_for(data.labels, np.resize(np.array(LANGUAGES), n))
    sets = {"VAE round trip of real images": reconstruct(pipe.vae, data.images),
            "teacher DDIM-25 w=3": sample(pipe, prompts, 25, 3.0, seed),
            "teacher DDIM-2 w=1": sample(pipe, prompts, 2, 1.0, seed)}
    return {name: _summary(model(torch.as_tensor(images), prompts)) for name, images in sets.items()}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def markdown(record: dict) -> str:
    lines = [f"# Toy preference scorer: held-out ranking and score calibration\n\n`{record['command']}`\n",
             f"Trained {record['steps']} steps x batch {record['batch']} (fresh procedural images, seed "
             f"{record['seed']}) in {record['train_seconds']:.0f} s wall, {record['train_cpu_seconds']:.0f} s CPU, "
             f"{record['threads']} thread on a 2-core machine shared with other jobs; "
             f"{record['parameters']:,} parameters, {record['file_bytes'] / 2**20:.2f} MiB, sha256 "
             f"`{record['sha256'][:16]}…`. Targets: {MATCH:g} for a clean image with its own prompt, "
             f"−{PER_WRONG_ATTRIBUTE:g} per wrong attribute, −{MAX_DEGRADATION:g} x severity sev in [0, 1] for "
             "Gaussian blur σ = 0.3 + 1.2 sev, noise std = 0.03 + 0.17 sev, contrast x (1 − 0.7 sev); a quarter "
             f"of the clean training images are toy-VAE round trips (tlcm_toy/scorer.py). Held out: N = "
             f"{record['held_out_n']} fresh images (seed {record['held_out_seed']}), prompts alternating en/zh.\n",
             "| pairwise check | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in record["held_out"]["pairwise_accuracy"].items()]
    lines += ["", "Score levels (s0 = 16 is the paper's margin: share_ge_16 = positive hinge satisfied):", "",
              "| set | mean | std | share ≥ 16 |", "|---|---|---|---|"]
    levels = {**record["held_out"]["score_levels"], **record["generated"]}
    lines += [f"| {k} | {v['mean']:.2f} | {v['std']:.2f} | {v['share_ge_16']:.3f} |" for k, v in levels.items()]
    if record["generated"]:
        lines += ["", f"Generated sets: N = {record['generated_n']} prompts (seed {record['generated_seed']}); "
                  f"each wrong attribute costs {PER_WRONG_ATTRIBUTE:g}, so a set's mean reads against the "
                  "held-out levels above."]
    if "rescored" in record:
        lines += [f"They were scored again on the current toy teacher (UNet sha256 "
                  f"`{record['rescored']['teacher_unet_sha256'][:16]}…`) with the same weights: "
                  f"`{record['rescored']['command']}`."]
    return "\n".join(lines) + "\n"


def write_record(record: dict, weights: Path, results: Path) -> None:
    atomic_write_text(weights.with_suffix(".json"), json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results, markdown(record))
    print(markdown(record))


def rescore(weights: Path, results: Path, command: str) -> None:
    """The generated sets' score levels again, for the same scorer weights: they depend on the toy teacher,
    which can be retrained without retraining the scorer (its VAE, the one the scorer learnt from, is kept)."""
    record = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    if file_sha256(weights) != record["sha256"]:
        raise SystemExit(f"{weights} is not the file its record describes (sha256 differs); retrain instead")
    record["generated"] = generated_figures(load_toy_scorer(weights), record["generated_n"], record["generated_seed"])
    record["rescored"] = dict(command=command,
                              teacher_unet_sha256=file_sha256(TEACHER / "unet" / "diffusion_pytorch_model.safetensors"))
    write_record(record, weights, results)


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file
    parser = argparse.ArgumentParser(description="Train the toy preference scorer (never the evaluator).")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"weights file (the committed one: {DEFAULT_WEIGHTS.relative_to(DEFAULT_WEIGHTS.parents[2])})")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--generated", type=int, default=200, help="prompts for the VAE/teacher score levels (0: skip)")
    parser.add_argument("--results", type=Path, default=Path("outputs/bench/toy_scorer.md"),
                        help=f"bench record (the committed one: {RESULTS.relative_to(RESULTS.parents[2])})")
    parser.add_argument("--rescore", action="store_true",
                        help="keep the weights at --out and score the teacher's sets again (after the toy teacher "
                             "is retrained)")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    command = " ".join(["nice python -m tlcm_toy.scorer", *(sys.argv[1:] if argv is None else argv)])
    if args.rescore:
        return rescore(args.out, args.results, command)
    start, start_cpu = time.perf_counter(), time.process_time()
    model = train_scorer(args.steps, args.batch, args.seed, args.lr, toy_vae())
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    scorer = load_toy_scorer(args.out)
    generated_seed = HELD_OUT_SEED + 1
    record = dict(
        command=command,
        steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=THREADS,
        train_seconds=round(train_seconds, 1), train_cpu_seconds=round(train_cpu_seconds, 1),
        parameters=sum(p.numel() for p in scorer.parameters()), file_bytes=args.out.stat().st_size,
        sha256=file_sha256(args.out), targets=dict(match=MATCH, per_wrong_attribute=PER_WRONG_ATTRIBUTE,
                                                   max_degradation=MAX_DEGRADATION),
        held_out_n=args.held_out, held_out_seed=HELD_OUT_SEED,
        held_out=held_out_figures(scorer, args.held_out, HELD_OUT_SEED),
        generated_n=args.generated, generated_seed=generated_seed,
        generated=generated_figures(scorer, args.generated, generated_seed) if args.generated else {})
    write_record(record, args.out, args.results)


if __name__ == "__main__":
    main()
