"""The form's fields, derived from the trainer's ``Config`` dataclasses, and values ↔ ``Config``.

Deriving the fields keeps "every hyperparameter under Advanced" true when the trainer grows a key, and
converting through ``train.config.load_config`` (with the same overrides the command line uses) means
the form accepts exactly what the CLI accepts and reports errors naming the same key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from train.config import DISTANCES, MIXED_PRECISION, OPTIMIZERS, Config, ConfigError, load_config

from .commands import flatten, override

CHOICES = {"train.mixed_precision": MIXED_PRECISION, "train.optimizer": OPTIMIZERS,
           "distill.distance": DISTANCES, "output.save_dtype": ("fp16", "bf16", "fp32")}
LINES = ("data.prompts", "data.sample_prompts")       # one item per line (prompts contain commas)
STAGES = {"mlcd.enabled": "mlcd.steps", "lcd.enabled": "lcd.steps"}
LABELS = {"model.path": "Base model", "data.prompts": "Prompt files", "output.dir": "Output folder",
          "mlcd.enabled": "Stage 1 (MLCD)", "mlcd.steps": "Stage 1 steps", "lcd.enabled": "Stage 2 (LCD)",
          "lcd.steps": "Stage 2 steps", "data.sample_prompts": "Sample prompts"}
INFO = {
    "model.path": "local diffusers folder (with model_index.json) or single-file .safetensors",
    "data.prompts": "one .txt / .jsonl / .csv file per line",
    "data.sample_prompts": "one prompt per line; rendered at the sample steps every N steps",
    "mlcd.enabled": "stage 1: data-free multistep latent consistency distillation (paper: 12000 steps, lr 1e-4)",
    "lcd.enabled": "stage 2: improved data-free LCD (paper: 2000 steps, lr 1e-5)",
    "lora.target_modules": "comma-separated module suffixes; empty = TLCM's 14 targets",
    "output.checkpoint_every": "steps between checkpoints (0 = only at the end)",
    "output.sample_every": "steps between sample grids (0 = off)",
}


@dataclass(frozen=True)
class Field:
    """One form input for one config key (or a stage toggle)."""

    key: str
    kind: str          # bool | int | float | str | optional_str | choice | list | optional_list | lines
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return LABELS.get(self.key) or self.key.split(".", 1)[1].replace("_", " ")

    @property
    def info(self) -> str:
        return INFO.get(self.key, "")


def _kind(key: str, hint: Any) -> str:
    if key in CHOICES:
        return "choice"
    if key in LINES:
        return "lines"
    args = typing.get_args(hint)
    if type(None) in args:
        return "optional_list" if any(typing.get_origin(a) is list for a in args) else "optional_str"
    if typing.get_origin(hint) is list:
        return "list"
    return {bool: "bool", int: "int", float: "float"}.get(hint, "str")


def _fields() -> tuple[Field, ...]:
    fields = [Field(key, "bool") for key in STAGES]
    for name, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{name}.{f.name}"
            fields.append(Field(key, _kind(key, hints[f.name]), tuple(CHOICES.get(key, ()))))
    return tuple(fields)


FIELDS = _fields()
KEYS = tuple(f.key for f in FIELDS)


def _show(field: Field, value: Any) -> Any:
    if field.kind == "lines":
        return "\n".join(value)
    if field.kind in ("list", "optional_list"):
        return "" if value is None else ", ".join(str(v) for v in value)
    if field.kind == "optional_str" and value is None:
        return ""
    return value


def form_values(flat: dict[str, Any]) -> dict[str, Any]:
    """Form values for some ``{"section.key": value}`` config values (a stage's toggle follows its steps;
    a disabled stage keeps the paper's step count in its box)."""
    defaults, shown = flatten(Config()), {}
    for toggle, steps in STAGES.items():
        if steps in flat:
            shown[toggle] = flat[steps] > 0
            shown[steps] = flat[steps] or defaults[steps]
    by_key = {f.key: f for f in FIELDS}
    return {key: _show(by_key[key], value) for key, value in {**flat, **shown}.items()}


def to_form(config: Config) -> dict[str, Any]:
    """Form values for every field."""
    return form_values(flatten(config))


def _read(field: Field, value: Any) -> Any:
    if field.kind == "lines":
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]
    if field.kind in ("list", "optional_list"):
        items = [yaml.safe_load(part) for part in str(value or "").split(",") if part.strip()]
        return None if field.kind == "optional_list" and not items else items
    if field.kind in ("int", "float"):
        if value is None or value == "":
            raise ConfigError(f"{field.key}: empty — type a number")
        if field.kind == "int":
            if float(value) != int(float(value)):
                raise ConfigError(f"{field.key}: expected a whole number, got {value}")
            return int(float(value))
        return float(value)
    if field.kind == "optional_str" and not str(value or "").strip():
        return None
    return value


def from_form(values: dict[str, Any]) -> Config:
    """The validated ``Config`` for form ``values`` (keyed like ``KEYS``); ``ConfigError`` names the key."""
    data = {f.key: _read(f, values[f.key]) for f in FIELDS}
    for toggle, steps in STAGES.items():
        if not data.pop(toggle):
            data[steps] = 0
    return load_config(None, [override(key, value) for key, value in data.items()])
