"""Config ↔ command line: the exact ``accelerate launch … -m tlcm_train --set …`` the app runs and shows.

Every value that differs from the trainer's defaults becomes one ``--set section.key=<JSON>`` (JSON is
valid YAML, which is how ``tlcm_train.config.apply_override`` parses values), so the line is self-contained,
copy-pasteable, and parses back to the same ``Config`` — no hidden config file. The app always starts
training through ``accelerate launch`` (``python -m accelerate.commands.launch`` of the app's own
interpreter, shown as ``accelerate launch``), one process or many.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from tlcm_train.config import Config

from .limits import (MAX_COMMAND, MAX_MACHINES, MAX_PROCESSES_PER_MACHINE, check_at_most, check_text,
                     check_whole)

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
TRAINER_MODULE = "tlcm_train"


@dataclass
class LaunchOptions:
    """``accelerate launch`` settings that are not part of the training config."""

    num_processes: int = 1          # total over all machines (one per GPU)
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = ""       # multi-node only
    main_process_port: int = 29500
    gpu_ids: str = ""               # e.g. "0,1"; empty = all

    def validate(self) -> "LaunchOptions":
        if self.num_processes < 1 or self.num_machines < 1:
            raise ValueError("GPUs / processes and machines must each be at least 1")
        if self.num_processes < self.num_machines:
            raise ValueError("processes is the total over all machines: it must be >= the number of machines")
        check_at_most("machines", self.num_machines, MAX_MACHINES)
        check_at_most("GPUs / processes per machine", math.ceil(self.num_processes / self.num_machines),
                      MAX_PROCESSES_PER_MACHINE)
        check_whole("main machine port", self.main_process_port, 1, 65535)
        check_text("main machine IP", self.main_process_ip)
        check_text("GPU ids", self.gpu_ids)
        if not 0 <= self.machine_rank < self.num_machines:
            raise ValueError(f"machine rank must be in 0..{self.num_machines - 1}")
        if self.num_machines > 1 and not self.main_process_ip.strip():
            raise ValueError("several machines need the main machine's IP address")
        return self


def override(key: str, value: Any) -> str:
    """``section.key=<value as JSON>``, which ``apply_override`` reads back to ``value``."""
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def flatten(config: Config) -> dict[str, Any]:
    """``{"section.key": value}`` for every config value."""
    return {f"{section}.{key}": value for section, fields in config.to_dict().items() for key, value in fields.items()}


def config_overrides(config: Config) -> list[str]:
    """The overrides that turn the trainer's defaults into ``config`` (required keys always included)."""
    defaults = flatten(Config())
    return [override(key, value) for key, value in flatten(config).items()
            if value != defaults[key] or key in ("model.path", "data.prompts", "output.dir")]


def launch_args(config: Config, launch: LaunchOptions) -> list[str]:
    """``accelerate launch`` flags; all given explicitly so accelerate needs no config file."""
    launch.validate()
    args = ["--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines),
            "--mixed_precision", config.train.mixed_precision, "--dynamo_backend", "no"]
    if launch.num_processes > 1:
        args.insert(0, "--multi_gpu")
    if launch.num_machines > 1:
        args += ["--machine_rank", str(launch.machine_rank), "--main_process_ip", launch.main_process_ip.strip(),
                 "--main_process_port", str(launch.main_process_port)]
    if launch.gpu_ids.strip():
        args += ["--gpu_ids", launch.gpu_ids.strip()]
    return args


def train_args(config: Config, resume: bool = False, overwrite: bool = False) -> list[str]:
    """The ``-m tlcm_train`` part: one ``--set`` per non-default value, plus ``--resume latest``, or for a fresh
    run the user confirmed over an earlier one ``--overwrite`` (the CLI refuses such a run without it)."""
    args = ["-m", TRAINER_MODULE]
    for item in config_overrides(config):
        args += ["--set", item]
    return args + (["--resume", "latest"] if resume else ["--overwrite"] if overwrite else [])


def build_argv(config: Config, launch: LaunchOptions, resume: bool = False, overwrite: bool = False) -> list[str]:
    """The argv the app executes."""
    return [*ACCELERATE, *launch_args(config, launch), *train_args(config, resume, overwrite)]


def show_command(config: Config, launch: LaunchOptions, resume: bool = False) -> str:
    """The same command as a shell line, one flag per line for reading."""
    parts = ["accelerate launch", *(shlex.quote(a) for a in launch_args(config, launch) + train_args(config, resume))]
    lines, current = [], parts[0]
    for part in parts[1:]:
        if part.startswith("-") and not part[1:2].isdigit():
            lines.append(current)
            current = part
        else:
            current += " " + part
    return " \\\n    ".join(lines + [current])


def parse_command(text: str) -> tuple[list[str], bool]:
    """The ``--set`` values and ``--resume`` flag of a shell line such as ``show_command``'s (its inverse
    for the training config), so an edited command can be brought back into the form."""
    from tlcm_train.cli import build_parser
    check_text("command", text, MAX_COMMAND)
    try:
        argv = shlex.split(text.replace("\\\n", " "))
    except ValueError as err:
        raise ValueError(f"the command does not parse as a shell line ({err})") from None
    if TRAINER_MODULE not in argv:
        raise ValueError("not a trainer command: expected `... -m tlcm_train --set section.key=value ...`")
    try:
        args = build_parser().parse_args(argv[argv.index(TRAINER_MODULE) + 1:])
    except SystemExit:          # argparse has printed why
        raise ValueError("the command's trainer arguments do not parse; see `python -m tlcm_train --help`") from None
    return list(args.overrides), args.resume == "latest"


def copy_config(config: Config, **sections: dict[str, Any]) -> Config:
    """``config`` with some values replaced, e.g. ``copy_config(c, output={"dir": d})`` (no validation)."""
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)
                                          for name, values in sections.items()})
