"""``tlcm-train`` / ``python -m tlcm_train``: distil an SDXL model into a TLCM LoRA from prompts only.

One process::

    python -m tlcm_train --config tlcm_train/configs/sdxl.yaml --set model.path=/models/sdxl --set data.prompts=[p.txt]

Several GPUs (DDP-style gradient averaging) or nodes: the same arguments behind ``accelerate launch``::

    accelerate launch --multi_gpu --num_processes 4 -m tlcm_train --config cfg.yaml
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 \\
        --main_process_port 29500 --num_processes 16 -m tlcm_train --config cfg.yaml

``--set section.key=value`` overrides the file (repeatable); ``--resume latest`` continues the newest
intact checkpoint in the output folder. An output folder holds one run: a second run into it is refused
while the first runs, and a new run over an earlier one's outputs needs ``--overwrite``. SIGINT/SIGTERM
save a checkpoint and the LoRA files, then exit 0. Refusals and unusable checkpoints exit 2 with one line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import yaml

from .config import Config, ConfigError, load_config
from .prompts import PromptFileError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlcm-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or TOML config file (defaults are the paper's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set mlcd.steps=100 (repeatable)")
    parser.add_argument("--output-dir", help="shortcut for --set output.dir=DIR")
    parser.add_argument("--resume", help="'latest' or a checkpoint-<step> folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an output folder that holds an earlier run, removing that run's "
                             "outputs (checkpoints, LoRA files, samples, metrics, config, status); other files stay")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def is_main_launch_process() -> bool:
    """Rank 0 of an ``accelerate launch`` (torchrun or MPI) group, or a lone process: read from the launcher's
    environment, because the output folder is claimed before accelerate starts."""
    from accelerate.utils import get_int_from_env
    return get_int_from_env(["RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK"], 0) == 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.overwrite and args.resume:
        print("tlcm-train: --overwrite starts a new run; it cannot be combined with --resume", file=sys.stderr)
        return 2
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
    from .checkpoint import resolve_resume
    from .run_folder import CHECKPOINTS, RunFolderError, claim_output
    output_dir = Path(config.output.dir).expanduser()
    owner = (claim_output(output_dir, fresh=not args.resume, overwrite=args.overwrite) if is_main_launch_process()
             else nullcontext())
    try:
        with owner:
            checkpoint = resolve_resume(args.resume, output_dir / CHECKPOINTS)     # before the model loads
            return train(config, checkpoint)
    except RunFolderError as err:
        print(f"tlcm-train: {err}", file=sys.stderr)
        return 2


def train(config: Config, checkpoint: Path | None) -> int:
    """Build the trainer and run it (from ``checkpoint`` if given); prints where the results are."""
    from .loop import Trainer
    try:
        trainer = Trainer(config)
    except (ConfigError, PromptFileError, FileNotFoundError, ImportError, ValueError) as err:
        print(f"tlcm-train: {err}", file=sys.stderr)
        return 2
    result = trainer.run(str(checkpoint) if checkpoint else None)
    if trainer.accelerator.is_main_process:
        verb = "stopped" if result.state == "stopped" else "finished"
        print(f"tlcm-train: {verb} at step {result.step}/{config.total_steps}; checkpoint {result.checkpoint}")
        for fmt, path in result.lora_files.items():
            print(f"  LoRA ({fmt}): {path}")
        if result.state == "stopped":
            print("  continue with: --resume latest")
    return 0
