"""``tlcm kit build OUT_DIR [--seed N]``: write the tiny offline SDXL kit for tests, demos and host checks."""
from __future__ import annotations

import argparse


def _build(args: argparse.Namespace) -> int:
    from .build import build_tiny_sdxl
    paths = build_tiny_sdxl(args.out_dir, seed=args.seed)
    print(f"diffusers folder: {paths.diffusers}\nsingle file:      {paths.checkpoint}\n"
          f"its configs:      {paths.config}")
    return 0


def add_parser(subparsers) -> None:
    kit = subparsers.add_parser("kit", help="tiny seeded SDXL models (offline, seconds) for tests and demos")
    commands = kit.add_subparsers(dest="kit_command", required=True, metavar="KIT_COMMAND")
    build = commands.add_parser("build", help="write the tiny kit as a diffusers folder and a single file")
    build.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (reused if already built with the seed)")
    build.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    build.set_defaults(func=_build)
