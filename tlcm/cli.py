"""``tlcm`` command line: one sub-command per concept, each defined next to the code it drives.

Each sub-command module exposes ``add_parser(subparsers)``, which registers the command and sets
``func`` (called with the parsed namespace, returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import one_line

SUBCOMMAND_MODULES = (
    "tlcm.generate_cli",
    "tlcm.lora.cli",
    "tlcm.testing.cli",
    "tlcm.demo",
    "tlcm.evaluation.cli",
)
USER_ERROR = 2
# What a user can fix (a path, a damaged or foreign file, a setting, NaN from a model or LoRA: NonFiniteError
# is a ValueError) is reported in one line without a traceback; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)
# Packages of the [diffusers] extra: a host install (ComfyUI, WebUI, plain `pip install .`) lacks them.
EXTRA_MODULES = {"diffusers", "transformers", "PIL", "peft", "accelerate"}


# transformers >= 5 logs this (once per class) when diffusers' SDXL pipelines import CLIPImageProcessor /
# SiglipImageProcessor without torchvision installed: those classes serve the safety checker and IP-Adapter
# image inputs, which no command here uses, so the notice only adds noise to every command's output.
TORCHVISION_FALLBACK_NOTICE = "requires torchvision (not installed); falling back to"
TORCHVISION_FALLBACK_LOGGER = "transformers.utils.import_utils"


class _DropTorchvisionFallbackNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK_NOTICE not in record.getMessage()


def silence_torchvision_fallback_notice() -> None:
    """Drop exactly that notice (a logging record, not a ``warnings`` warning) for the process; every other
    transformers message still shows. Needs no transformers import and is idempotent."""
    logger = logging.getLogger(TORCHVISION_FALLBACK_LOGGER)
    if not any(isinstance(f, _DropTorchvisionFallbackNotice) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallbackNotice())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlcm", description="TLCM: SDXL in 2-8 steps with a TLCM LoRA.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; a user error prints ``tlcm: <message>`` on stderr and returns 2."""
    silence_torchvision_fallback_notice()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"tlcm: {one_line(err)}", file=sys.stderr)
        return USER_ERROR
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in EXTRA_MODULES:
            raise
        print(f"tlcm: tlcm {args.command} needs {err.name.split('.')[0]}, which is "
              "not installed: pip install \"tlcm-suite[diffusers]\" (host installs leave it out on purpose)",
              file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
