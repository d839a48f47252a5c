"""``tlcm`` command line: one sub-command per concept, each defined next to the code it drives.

Each sub-command module exposes ``add_parser(subparsers)``, which registers the command and sets
``func`` (called with the parsed namespace, returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "tlcm.generate_cli",
    "tlcm.lora.cli",
    "tlcm.testing.cli",
    "tlcm.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlcm", description="TLCM: SDXL in 2-8 steps with a TLCM LoRA.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"tlcm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
