"""``tlcm-train`` / ``python -m train``: distil an SDXL model into a TLCM LoRA from prompts only.

One process::

    python -m train --config train/configs/sdxl.yaml --set model.path=/models/sdxl --set data.prompts=[p.txt]

Several GPUs (DDP-style gradient averaging) or nodes: the same arguments behind ``accelerate launch``::

    accelerate launch --multi_gpu --num_processes 4 -m train --config cfg.yaml
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 \\
        --main_process_port 29500 --num_processes 16 -m train --config cfg.yaml

``--set section.key=value`` overrides the file (repeatable); ``--resume latest`` continues the newest
checkpoint in the output folder. SIGINT/SIGTERM save a checkpoint and the LoRA files, then exit 0.
"""
from __future__ import annotations

import argparse
import logging
import sys

import yaml

from .config import ConfigError, load_config
from .prompts import PromptFileError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlcm-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or TOML config file (defaults are the paper's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set mlcd.steps=100 (repeatable)")
    parser.add_argument("--output-dir", help="shortcut for --set output.dir=DIR")
    parser.add_argument("--resume", help="'latest' or a checkpoint-<step> folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"output.dir={args.output_dir}"] if args.output_dir else [])
    try:
        config = load_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"tlcm-train: config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .loop import Trainer
    try:
        trainer = Trainer(config)
    except (ConfigError, PromptFileError, FileNotFoundError, ImportError, ValueError) as err:
        print(f"tlcm-train: {err}", file=sys.stderr)
        return 2
    result = trainer.run(args.resume)
    if trainer.accelerator.is_main_process:
        verb = "stopped" if result.state == "stopped" else "finished"
        print(f"tlcm-train: {verb} at step {result.step}/{config.total_steps}; checkpoint {result.checkpoint}")
        for fmt, path in result.lora_files.items():
            print(f"  LoRA ({fmt}): {path}")
        if result.state == "stopped":
            print("  continue with: --resume latest")
    return 0
