"""``python -m tlcm_train.lpips``: build synthetic 2AFC sets, train and evaluate the latent LPIPS.

    # BAPPS (user-supplied): encode with the target model's VAE, train, evaluate on val
    python -m tlcm_train.lpips train --data bapps/2afc/train --vae /models/sdxl --out llpips.safetensors \\
        --save-latents bapps_train_latents.safetensors --val bapps/2afc/val
    python -m tlcm_train.lpips eval --weights llpips.safetensors --data bapps/2afc/val --vae /models/sdxl
    # toy: distort the toy images in pixel space, encode with the toy VAE, train a narrow copy
    python -m tlcm_train.lpips synth --source toy_images/ --vae toy_vae/ --size 32 --n 4000 --out toy2afc.safetensors
    python -m tlcm_train.lpips train --data toy2afc.safetensors --widths 16,32,64,64,64 --out toy_llpips.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .bapps import IMAGE_SUFFIXES, encode_2afc, find_triplets, load_image, load_vae, vae_encoder
from .model import LatentLPIPS, LatentLPIPSConfig, load_latent_lpips, save_latent_lpips
from .synthetic import DISTORTIONS, make_synthetic_2afc
from .train import train_lpips, two_afc_agreement
from .twoafc import TwoAFCLatents


def load_2afc(path: str | Path, vae: str | None, size: int) -> TwoAFCLatents:
    """A precomputed ``.safetensors`` 2AFC latent file, or a BAPPS folder encoded with the VAE at ``vae``."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        return TwoAFCLatents.load(path)
    triplets = find_triplets(path)
    if vae is None:
        raise ValueError(f"{path} holds images: pass --vae (a local diffusers VAE or SDXL folder) to encode them")
    return encode_2afc(triplets, vae_encoder(load_vae(vae)), size=size)


def load_source(path: str | Path, size: int) -> torch.Tensor:
    """References for ``synth``: a folder of images ((N, 3, size, size) in [-1, 1]) or a .safetensors file
    holding one (N, C, H, W) tensor (images in [-1, 1] or latents)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return torch.stack([load_image(f, size) for f in files])
    if path.suffix != ".safetensors" or not path.is_file():
        raise FileNotFoundError(f"--source: no image folder or .safetensors file at {path}")
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    if len(tensors) != 1:
        raise ValueError(f"{path}: expected exactly one tensor, found {sorted(tensors)}")
    return next(iter(tensors.values())).float()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tlcm_train.lpips", description="Latent LPIPS: data, training, evaluation.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "eval", "synth"):
        s = sub.add_parser(name)
        s.add_argument("--vae", help="local diffusers VAE (or SDXL folder) to encode images")
        s.add_argument("--size", type=int, default=64, help="image size before encoding (BAPPS patches are 64)")
    for name in ("train", "eval"):
        s = sub.choices[name]
        s.add_argument("--data", required=True, help="BAPPS 2AFC folder, or precomputed 2AFC latents (.safetensors)")
        s.add_argument("--save-latents", help="also write the encoded 2AFC latents here (.safetensors)")
    t = sub.choices["train"]
    t.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    t.add_argument("--steps", type=int, default=10000)
    t.add_argument("--batch-size", type=int, default=50)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--widths", default="64,128,256,512,512", help="five VGG block widths")
    t.add_argument("--no-batch-norm", action="store_true")
    t.add_argument("--init", help="start from these latent LPIPS weights (architecture from the file; "
                   "--widths and --no-batch-norm do not apply)")
    t.add_argument("--lin", action="store_true", help="train only the linear heads on the --init trunk (LPIPS 'lin')")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val", help="held-out 2AFC data (folder or .safetensors) to report agreement on")
    sub.choices["eval"].add_argument("--weights", required=True)
    s = sub.choices["synth"]
    s.add_argument("--source", required=True, help="folder of images, or .safetensors with one (N, C, H, W) tensor")
    s.add_argument("--out", required=True, help="2AFC latents to write (.safetensors)")
    s.add_argument("--n", type=int, default=4000, help="number of triplets")
    s.add_argument("--kinds", default=",".join(DISTORTIONS), help="judged distortions (comma-separated)")
    s.add_argument("--nuisance", default="", help="distortions the judge ignores (comma-separated)")
    s.add_argument("--seed", type=int, default=0)
    return p


def _names(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        encode = vae_encoder(load_vae(args.vae)) if args.vae else None
        data = make_synthetic_2afc(load_source(args.source, args.size), args.n, torch.Generator().manual_seed(args.seed),
                                   kinds=_names(args.kinds), nuisance=_names(args.nuisance), encode=encode)
        print(f"{len(data)} synthetic 2AFC triplets of latents {tuple(data.ref.shape[1:])}: {data.save(args.out)}")
        return 0
    data = load_2afc(args.data, args.vae, args.size)
    if args.save_latents:
        data.save(args.save_latents)
    if args.command == "eval":
        print(f"2AFC agreement: {two_afc_agreement(load_latent_lpips(args.weights), data):.4f} on {len(data)} pairs")
        return 0
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        raise SystemExit(f"--widths: five comma-separated integers, got {args.widths!r}") from None
    if args.lin and not args.init:
        raise SystemExit("--lin trains the heads on a pretrained trunk: give that model with --init")
    torch.manual_seed(args.seed)
    if args.init:
        model = load_latent_lpips(args.init)
        if model.config.in_channels != data.ref.shape[1]:
            raise SystemExit(f"--init {args.init} reads {model.config.in_channels}-channel latents, the data has "
                             f"{data.ref.shape[1]}")
    else:
        model = LatentLPIPS(LatentLPIPSConfig(data.ref.shape[1], widths, not args.no_batch_norm))
    losses = train_lpips(model, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         generator=torch.Generator().manual_seed(args.seed), train_trunk=not args.lin)
    save_latent_lpips(model, args.out)
    tail = losses[-50:]
    print(f"final ranking loss {sum(tail) / len(tail):.4f}; train 2AFC agreement {two_afc_agreement(model, data):.4f}; "
          f"weights: {args.out}")
    if args.val:
        print(f"val 2AFC agreement {two_afc_agreement(model, load_2afc(args.val, args.vae, args.size)):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
