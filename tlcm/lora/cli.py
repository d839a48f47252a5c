"""``tlcm lora convert`` and ``tlcm lora inspect``: fix a LoRA's layout and scale for a host."""
from __future__ import annotations

import argparse

from ..models.device import DTYPE_NAMES
from .reading import load_lora
from .writing import FORMATS, save_lora

DTYPES = {"keep": None, **DTYPE_NAMES}


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="LoRA .safetensors/.bin file or PEFT adapter folder")
    parser.add_argument("--config", help="PEFT LoRA config JSON (default: the one found beside the weights)")
    parser.add_argument("--alpha", type=float, help="alpha for every module (scale alpha/rank); "
                        "8 reproduces the official TLCM script at rank 64 (0.125)")


def _load(args: argparse.Namespace):
    return load_lora(args.input, config=args.config, alpha=args.alpha)


def _inspect(args: argparse.Namespace) -> int:
    print(_load(args).summary())
    return 0


def _convert(args: argparse.Namespace) -> int:
    lora = _load(args)
    out = save_lora(lora, args.output, args.to, dtype=DTYPES[args.dtype], overwrite=args.force)
    print(f"wrote {args.to} LoRA: {out}\n{lora.summary()}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``lora`` with ``convert`` and ``inspect``."""
    parser = subparsers.add_parser("lora", help="convert or inspect a TLCM LoRA",
                                   description="Read PEFT/diffusers/kohya LoRAs and write them at the right scale.")
    commands = parser.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    inspect = commands.add_parser("inspect", help="print format, rank, alpha, scale and module count")
    _add_source_args(inspect)
    inspect.set_defaults(func=_inspect)
    convert = commands.add_parser("convert", help="write the LoRA as kohya (ComfyUI/A1111), diffusers or PEFT")
    _add_source_args(convert)
    convert.add_argument("output", help="output .safetensors file (kohya, diffusers) or folder (peft)")
    convert.add_argument("--to", required=True, choices=FORMATS, help="output layout")
    convert.add_argument("--dtype", choices=tuple(DTYPES), default="keep", help="weight dtype of the output")
    convert.add_argument("--force", action="store_true", help="replace an existing output file or folder")
    convert.set_defaults(func=_convert)
    return parser
