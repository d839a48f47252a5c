"""The form's fields, derived from the trainer's ``Config`` dataclasses, and values ↔ ``Config``.

Deriving the fields keeps "every hyperparameter under Advanced" true when the trainer grows a key, and
converting through ``tlcm_train.config.load_config`` (with the same overrides the command line uses) means
the form accepts exactly what the CLI accepts and reports errors naming the same key.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from tlcm_train.config import (DECODE_CHECKPOINTS, DECODE_DTYPES, DISC_BACKBONES, DISTANCES, FAKE_DATA, GAN_LOSSES, GAN_REAL,
                               MIXED_PRECISION, OPTIMIZERS, SCORER_DTYPES, Config, ConfigError, load_config)
from tlcm_train.config import STAGES as STAGE_NAMES

from .commands import flatten, override
from .limits import check_config_values

_PAPER = Config()
CHOICES = {"train.mixed_precision": MIXED_PRECISION, "train.optimizer": OPTIMIZERS,
           "distill.distance": DISTANCES, "output.save_dtype": ("fp16", "bf16", "fp32"),
           "mps.scorer_dtype": SCORER_DTYPES, "mps.decode_dtype": DECODE_DTYPES,
           "mps.decode_checkpoint": DECODE_CHECKPOINTS, "dm.fake_data": FAKE_DATA, "dm.gan_real": GAN_REAL,
           "dm.gan_loss": GAN_LOSSES, "dm.disc_backbone": DISC_BACKBONES}
LINES = ("data.prompts", "data.sample_prompts")       # one item per line (prompts contain commas)
STAGES = {f"{stage}.enabled": f"{stage}.steps" for stage in STAGE_NAMES}   # a toggle per stage, in order
STAGE_TITLES = {"mlcd": "Stage 1 (MLCD)", "lcd": "Stage 2 (LCD)", "mps": "Stage 3 (preference)",
                "dm": "Stage 4 (DM + GAN)"}
LABELS = {"model.path": "Base model", "data.prompts": "Prompt files", "output.dir": "Output folder",
          "data.sample_prompts": "Sample prompts", "mps.scorer": "Preference scorer",
          "mps.scorer_weights": "Scorer weights (stages 3-4)",
          **{f"{s}.enabled": title for s, title in STAGE_TITLES.items()},
          **{f"{s}.steps": f"{title.split(' (')[0]} steps" for s, title in STAGE_TITLES.items()}}
INFO = {
    "model.path": "local diffusers folder (with model_index.json) or single-file .safetensors",
    "data.prompts": "one .txt / .jsonl / .csv file per line",
    "data.sample_prompts": "one prompt per line; rendered at the sample steps every N steps",
    "mlcd.enabled": f"data-free multistep latent consistency distillation (paper: {_PAPER.mlcd.steps} steps, "
                    f"lr {_PAPER.mlcd.lr:g})",
    "lcd.enabled": f"improved data-free LCD (paper: {_PAPER.lcd.steps} steps, lr {_PAPER.lcd.lr:g})",
    "mps.enabled": f"LCD + the preference hinge loss on a scorer, Eq. 11 (paper: {_PAPER.mps.steps} steps, "
                   f"lr {_PAPER.mps.lr:g}, MPS)",
    "dm.enabled": f"LCD + preference + distribution matching (Eq. 12) + adversarial loss (Eq. 13) (paper: "
                  f"{_PAPER.dm.steps} steps, lr {_PAPER.dm.lr:g})",
    "mps.scorer": "mps: the paper's MPS (SDXL); or a scorer plugin module:OBJECT (the toy world's: "
                  "tlcm_toy.scorer:TOY_SCORER)",
    "mps.scorer_weights": "local file: a converted MPS state dict (.safetensors/.pth, see tlcm_train/preference/mps.py) "
                          "or the plugin scorer's weights; needed while stage 3 or 4 runs",
    "mps.weight": "of the preference term in stages 3 and 4 (0 = off)",
    "mps.margin": "s0: the score an image must reach with its own prompt",
    "mps.scorer_dtype": "auto: fp16 on a GPU (as MPS ships), fp32 on the CPU",
    "mps.decode_checkpoint": "unit: recompute the VAE decoder piece by piece in the backward (same result, "
                             "far less memory); none: keep everything",
    "mps.decode_dtype": "auto: bf16 on a GPU that has it, else fp32 (SDXL's VAE overflows in fp16)",
    "mps.decode_crop": "0: score the whole image; N: decode a random N x N latent window (saves memory, "
                       "scores a part of the image against the whole prompt)",
    "dm.dmd_weight": "distribution matching term (0 = off)",
    "dm.gan_weight": "adversarial term (0 = off)",
    "dm.fake_rank": "LoRA rank of the fake score (a second adapter on the frozen UNet)",
    "dm.fake_updates": "fake-score updates per student step",
    "dm.fake_data": "what the fake score learns from: rollout (the paper's multi-step student samples) or one_step "
                    "(the one-step outputs the DMD gradient moves)",
    "dm.gan_real": "the discriminator's real samples: teacher (CFG-DDIM from the noised rollout) or rollout "
                   "(Eq. 13 literally: the student's multi-step samples)",
    "dm.gan_teacher_steps": "teacher CFG-DDIM steps that make the discriminator's real samples",
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
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{field.key}: expected a number, got {value!r}") from None
        if field.kind == "int":
            if not number.is_integer():         # also refuses inf and nan
                raise ConfigError(f"{field.key}: expected a whole number, got {value}")
            return int(number)
        return number
    if field.kind == "optional_str" and not str(value or "").strip():
        return None
    return value


def from_form(values: dict[str, Any]) -> Config:
    """The validated ``Config`` for form ``values`` (keyed like ``KEYS``), within the app's limits;
    ``ConfigError`` or ``LimitError`` names the key."""
    data = {f.key: _read(f, values[f.key]) for f in FIELDS}
    for toggle, steps in STAGES.items():
        if not data.pop(toggle):
            data[steps] = 0
    config = load_config(None, [override(key, value) for key, value in data.items()])
    check_config_values(flatten(config))
    return config


@functools.lru_cache(maxsize=1)
def _paper_form() -> dict[str, Any]:
    return to_form(_PAPER)


def paper_text(key: str) -> str:
    """The paper's value of ``key`` as the form shows it (for the hint beside a field)."""
    value = _paper_form()[key]
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if str(value) != "" else "(empty)"
