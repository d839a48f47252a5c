"""Toy latent-LPIPS weights: a pretrained latent trunk + LPIPS heads learnt on synthetic 2AFC, one command.

LPIPS's own recipe is a pretrained classification network (ImageNet VGG) whose features are compared
through linear heads learnt from 2AFC judgements ("lin"). A trunk trained from scratch on a few thousand
synthetic triplets (TLCM trained theirs from scratch on BAPPS' 150k+) learns no content features: its
distance barely separates a different image from a mild distortion, and as the consistency distance it
made the student far worse (bench/results/toy_ablation.md, earlier row ③). So the toy follows LPIPS:

0. trunk: the latent VGG trained to classify the toy attributes (shape, colour, texture, position) from
   the latents of fresh toy images (the toy world's "ImageNet"; heads left at LPIPS's uniform start);

``python -m tlcm_toy.lpips_weights`` (1 torch thread; deterministic for a fixed thread count) then runs
the documented ``python -m tlcm_train.lpips`` CLI end to end and records what it measured:

1. references: ``tlcm_toy.data.generate`` at a training seed (and at a different held-out seed), written
   as one (N, 3, 32, 32) tensor in [-1, 1] (the VAE's range) under ``--work``;
2. ``python -m tlcm_train.lpips synth``: every documented distortion of :mod:`tlcm_train.lpips.synthetic` applied in
   *pixel space*, judge = sigmoid((s0 − s1)/τ) on severities (the synthetic "human"), each image encoded
   with the toy teacher's x2 VAE (posterior mean × scaling_factor: the teacher UNet's latent space);
3. ``python -m tlcm_train.lpips train --init trunk --lin``: the heads of that narrow latent LPIPS (VGG16-BN
   layout, first three max-pools removed, widths ``WIDTHS``) learnt on the 2AFC set, trunk frozen;
4. 2AFC agreement on the held-out set for the trained model, plain latent squared L2, the pretrained trunk
   with uniform heads and the same architecture at its random initialisation; written to
   ``tlcm_toy/weights/lpips.json`` and ``bench/results/toy_lpips.md`` (+ ``.json``).

Use: ``python -m tlcm_train --set distill.distance=latent_lpips
--set distill.lpips_weights=tlcm_toy/weights/lpips.safetensors``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tlcm_train.lpips import cli
from tlcm_train.lpips.bapps import load_vae, vae_encoder
from tlcm_train.lpips.model import LatentLPIPS, LatentLPIPSConfig, load_latent_lpips, save_latent_lpips
from tlcm_train.lpips.synthetic import DISTORTIONS
from tlcm_train.lpips.train import two_afc_agreement
from tlcm_train.lpips.twoafc import TwoAFCLatents

from .bench_teacher import DEFAULT_TEACHER
from .data import ATTRIBUTES, generate
from .vae import to_model

WEIGHTS = Path(__file__).parent / "weights" / "lpips.safetensors"
RESULTS = Path("bench/results/toy_lpips")
WIDTHS = (8, 16, 32, 32, 32)
TRAIN_SEED, HELD_OUT_SEED = 61_001, 61_002        # image seeds; the synthetic-pair generator uses the same seed
TRAIN_REFS, TRAIN_PAIRS = 1000, 4000
HELD_OUT_REFS, HELD_OUT_PAIRS = 500, 1000
STEPS, BATCH, LR, INIT_SEED = 300, 100, 1e-4, 0    # heads only (lin): LPIPS's own learning rate
PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR, PRETRAIN_SEED = 600, 128, 2e-3, 62_000   # fresh images per step


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory where it lies below it (portable recorded commands)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def write_references(path: Path, n: int, seed: int) -> Path:
    """Toy images ``generate(n, seed)`` as one [-1, 1] tensor, the ``--source`` format of ``synth``."""
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": to_model(generate(n, seed).images).contiguous()}, str(path))
    return path


def pretrain_trunk(vae_path: Path, steps: int = PRETRAIN_STEPS, seed: int = PRETRAIN_SEED, log=print
                   ) -> tuple[LatentLPIPS, dict[str, float]]:
    """The latent trunk trained as a toy-attribute classifier (a linear layer on its last two taps, average
    pooled; thrown away after), on the teacher VAE's latents of fresh images each step; returns the model
    with uniform heads and its held-out attribute accuracy."""
    encode = vae_encoder(load_vae(vae_path))
    sizes = [len(values) for values in ATTRIBUTES.values()]

    def batch(n: int, image_seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        data = generate(n, image_seed)
        with torch.no_grad():
            latents = encode(to_model(data.images))
        return latents, [torch.as_tensor(data.labels[name]) for name in ATTRIBUTES]

    def logits(model: LatentLPIPS, classifier: nn.Linear, latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps = model.trunk(latents)
        return classifier(torch.cat([taps[-2].mean((2, 3)), taps[-1].mean((2, 3))], 1)).split(sizes, 1)

    torch.manual_seed(seed)
    model = LatentLPIPS(LatentLPIPSConfig(4, WIDTHS))
    classifier = nn.Linear(WIDTHS[-2] + WIDTHS[-1], sum(sizes))
    optimizer = torch.optim.AdamW([*model.trunk.parameters(), *classifier.parameters()], lr=PRETRAIN_LR,
                                  weight_decay=1e-4)
    model.train()
    for step in range(steps):
        latents, labels = batch(PRETRAIN_BATCH, seed + 1 + step)
        loss = sum(nn.functional.cross_entropy(lg, y) for lg, y in zip(logits(model, classifier, latents), labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"trunk pretraining step {step}: attribute loss {float(loss.detach()):.4f}", flush=True)
    model.eval()
    latents, labels = batch(1000, seed)              # held out: the training images used seed + 1 onwards
    with torch.no_grad():
        accuracy = {name: float((lg.argmax(1) == y).float().mean())
                    for name, lg, y in zip(ATTRIBUTES, logits(model, classifier, latents), labels)}
    return model.requires_grad_(False), accuracy


def sq_l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).pow(2).flatten(1).mean(1)


def ceiling(data: TwoAFCLatents) -> float:
    """The best any distance can score: always side with the judges' majority."""
    return float(torch.maximum(data.judge, 1 - data.judge).mean())


def run_cli(argv: list[str]) -> tuple[str, float, float]:
    """One ``python -m tlcm_train.lpips`` command in-process: its stdout, wall seconds and CPU seconds."""
    buffer = io.StringIO()
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(buffer):
        rc = cli.main(argv)
    if rc:
        raise SystemExit(f"python -m tlcm_train.lpips {' '.join(argv)} failed ({rc})")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"python -m tlcm_train.lpips {' '.join(argv)}  [{seconds:.0f} s wall, {cpu:.0f} s CPU]\n"
          f"{buffer.getvalue().rstrip()}", flush=True)
    return buffer.getvalue(), seconds, cpu


def markdown(r: dict) -> str:
    a, h = r["held_out_agreement"], r["held_out"]
    rows = [("latent LPIPS: pretrained trunk + learnt heads (the weights)", a["trained"]),
            ("pretrained trunk, uniform heads", a["pretrained_uniform"]), ("plain latent squared L2", a["latent_l2"]),
            ("random trunk, uniform heads", a["untrained"]), ("ceiling (judges' majority)", a["ceiling"]),
            ("chance", 0.5)]
    pre = r["pretrain"]
    table = "\n".join(f"| {name} | {value:.4f} |" for name, value in rows)
    cmds = "\n".join(r["commands"])
    return f"""# Toy latent LPIPS: synthetic 2AFC on toy images in the toy teacher's latent space

Reproduce (one command, 1 torch thread, ~{r['total_seconds'] / 60:.0f} min on a shared CPU): `{r['command']}`, which runs

```bash
{cmds}
```

- References: `tlcm_toy.data.generate` images in [-1, 1]; train seed {r['train']['image_seed']}
  ({r['train']['references']} images, {r['train']['pairs']} triplets, pair seed {r['train']['pair_seed']}), held-out seed
  {h['image_seed']} ({h['references']} images, {h['pairs']} triplets, pair seed {h['pair_seed']}).
- Distortions (pixel space, then encoded with the toy teacher's VAE, `{r['vae']}`): {', '.join(r['kinds'])}
  (all of `tlcm_train/lpips/synthetic.py`; p1 gets p0's kind with probability 0.5, severities uniform in [0.05, 1]),
  no nuisance distortion. Latents {r['latent_shape']}.
- **Human-judgement proxy**: there are no human votes in the toy world. The judge is the distortion
  magnitude, judge = P(p1 closer) = sigmoid((s0 − s1) / 0.05) on the two severities; the amplitudes of the
  kinds at s = 1 are a calibration choice (`synthetic.py`), not a perceptual measurement. So this measures
  "ranks pixel-space distortion severity across kinds from latents", which is what the trainer's consistency
  losses need on the toy; it says nothing about human perception.
- Model: `LatentLPIPS` widths {r['widths']}, VGG16-BN layout with the first three max-pools removed,
  {r['parameters']:,} parameters. Trunk pretrained as a toy-attribute classifier on the teacher VAE's latents
  ({pre['steps']} steps × {pre['batch_size']} fresh images, lr {pre['lr']:g}, seed {pre['seed']}; {pre['seconds']:.0f} s): held-out
  accuracy {', '.join(f"{k} {v:.3f}" for k, v in pre['held_out_accuracy'].items())}. This is the toy's ImageNet-VGG:
  the distance compares content features, as LPIPS does; the toy evaluator behind FD is a separate pixel-space
  classifier of the same attributes, so, as with ImageNet features in both LPIPS and FID, a student trained
  with this distance may be favoured by FD. Heads learnt on the 2AFC set with the trunk frozen (LPIPS "lin"):
  {r['steps']} steps, batch {r['batch_size']}, lr {r['lr']:g}, seed {r['init_seed']}; {r['train_seconds']:.0f} s wall, {r['train_cpu_seconds']:.0f} s CPU
  ({r['threads']} torch thread, 2 cores shared with other jobs).
- Weights: `{r['weights']}` ({r['weights_bytes']:,} bytes, sha256 `{r['weights_sha256'][:16]}…`).

2AFC agreement on the held-out set ({h['pairs']} triplets; BAPPS scoring, ties count half):

| distance | 2AFC agreement |
|---|---|
{table}

Train-set agreement of the trained model: {r['train_agreement']['trained']:.4f} (latent L2 {r['train_agreement']['latent_l2']:.4f}).
All distances lie within the standard error of {h['pairs']} triplets (± {(a['trained'] * (1 - a['trained']) / h['pairs']) ** 0.5:.3f}) of
one another: this judge (distortion severity) is almost determined by latent L2, so the synthetic 2AFC
cannot tell them apart, and the learnt heads do not beat uniform ones on it. What the pretrained trunk adds
shows elsewhere: it keeps different images far apart relative to mild distortions (`tests/test_toy_lpips.py`),
which the earlier trunk trained from scratch on these triplets had lost, and it changes training
(`bench/results/toy_ablation.md`, row ③).
Use it in the trainer: `--set distill.distance=latent_lpips --set distill.lpips_weights={r['weights']}`.
"""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="toy teacher folder (its vae/ encodes)")
    p.add_argument("--work", type=Path, default=Path("outputs/toy_lpips"), help="references and 2AFC latents")
    p.add_argument("--out", type=Path, required=True,
                   help=f"weights file (the committed one: {WEIGHTS.relative_to(WEIGHTS.parents[2])})")
    p.add_argument("--results", type=Path, default=Path("outputs/bench/toy_lpips"),
                   help=f"bench record (.md and .json; the committed one: {RESULTS})")
    p.add_argument("--steps", type=int, default=STEPS)
    args = p.parse_args(argv)
    args.teacher, args.out = _relative(args.teacher), _relative(args.out)
    torch.set_num_threads(1)
    start = time.perf_counter()
    sets = {"train": (TRAIN_SEED, TRAIN_REFS, TRAIN_PAIRS), "held_out": (HELD_OUT_SEED, HELD_OUT_REFS, HELD_OUT_PAIRS)}
    commands, facts = [], {}
    trunk, trunk_accuracy = pretrain_trunk(args.teacher)
    trunk_path = save_latent_lpips(trunk, args.work / "trunk.safetensors")
    trunk_seconds = time.perf_counter() - start
    commands.append(f"python -c \"from tlcm_toy.lpips_weights import pretrain_trunk as p, save_latent_lpips as s; "
                    f"from pathlib import Path; s(p(Path('{args.teacher}'))[0], '{trunk_path}')\"")
    for name, (seed, refs, pairs) in sets.items():
        source = write_references(args.work / f"{name}_images.safetensors", refs, seed)
        out = args.work / f"{name}_2afc.safetensors"
        argv_synth = ["synth", "--source", str(source), "--vae", str(args.teacher), "--n", str(pairs),
                      "--seed", str(seed), "--out", str(out)]
        commands.append(f"python -c \"from tlcm_toy.lpips_weights import write_references as w; from pathlib import "
                        f"Path; w(Path('{source}'), {refs}, {seed})\"")
        commands.append("python -m tlcm_train.lpips " + " ".join(argv_synth))
        _, seconds, _ = run_cli(argv_synth)
        facts[name] = dict(image_seed=seed, pair_seed=seed, references=refs, pairs=pairs, path=str(out),
                           synth_seconds=round(seconds, 1))
    argv_train = ["train", "--data", facts["train"]["path"], "--init", str(trunk_path), "--lin",
                  "--steps", str(args.steps), "--batch-size", str(BATCH), "--lr", str(LR), "--seed", str(INIT_SEED),
                  "--out", str(args.out), "--val", facts["held_out"]["path"]]
    commands.append("python -m tlcm_train.lpips " + " ".join(argv_train))
    train_log, train_seconds, train_cpu = run_cli(argv_train)

    train_set, held_out = TwoAFCLatents.load(facts["train"]["path"]), TwoAFCLatents.load(facts["held_out"]["path"])
    trained = load_latent_lpips(args.out)
    torch.manual_seed(INIT_SEED)                  # the CLI's initialisation, before any training
    untrained = LatentLPIPS(LatentLPIPSConfig(held_out.ref.shape[1], WIDTHS)).eval()
    blob = args.out.read_bytes()
    record = dict(
        command=" ".join(["python -m tlcm_toy.lpips_weights", *(argv if argv is not None else sys.argv[1:])]),
        commands=commands, vae=str(Path(args.teacher) / "vae"), kinds=list(DISTORTIONS), nuisance=[],
        latent_shape=list(held_out.ref.shape[1:]), train=facts["train"], held_out=facts["held_out"],
        widths=list(WIDTHS), parameters=sum(p.numel() for p in trained.parameters()), steps=args.steps,
        batch_size=BATCH, lr=LR, init_seed=INIT_SEED, threads=torch.get_num_threads(),
        train_seconds=round(train_seconds, 1), train_cpu_seconds=round(train_cpu, 1), train_log=train_log.strip(),
        held_out_agreement=dict(trained=two_afc_agreement(trained, held_out),
                                latent_l2=two_afc_agreement(sq_l2, held_out),
                                pretrained_uniform=two_afc_agreement(trunk, held_out),
                                untrained=two_afc_agreement(untrained, held_out), ceiling=ceiling(held_out)),
        pretrain=dict(steps=PRETRAIN_STEPS, batch_size=PRETRAIN_BATCH, lr=PRETRAIN_LR, seed=PRETRAIN_SEED,
                      held_out_accuracy=trunk_accuracy, seconds=round(trunk_seconds, 1)),
        train_agreement=dict(trained=two_afc_agreement(trained, train_set),
                             latent_l2=two_afc_agreement(sq_l2, train_set)),
        weights=str(args.out), weights_bytes=len(blob), weights_sha256=hashlib.sha256(blob).hexdigest(),
        torch=torch.__version__, python=platform.python_version(),
    )
    record["total_seconds"] = round(time.perf_counter() - start, 1)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    args.results.with_suffix(".md").write_text(markdown(record), encoding="utf-8")
    print(markdown(record))
    return record


if __name__ == "__main__":
    main()
