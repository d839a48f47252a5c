"""PEFT ``LoraConfig`` JSON: find it next to the weights, read the fields that set the scale.

The official TLCM release ships ``lora_model_adapter_config.json`` (not ``adapter_config.json``), so the
config is recognised by content (a file named ``*adapter_config.json`` must be one). Every scale field is
checked on reading: a string rank, a list alpha or a zero rank is an error naming the file and field, never
a silently different scale. Per-module rank/alpha follow PEFT exactly: ``rank_pattern`` and
``alpha_pattern`` keys are regexes tried in order, the first with ``re.match(rf"(.*\\.)?({key})$", name)``
wins (peft ``utils.other.get_pattern_key``); ``use_rslora`` makes the scale alpha/sqrt(r).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..file_readers import read_json
from .targets import TLCM_TARGET_SUFFIXES

PEFT_DEFAULT_R = 8
PEFT_DEFAULT_ALPHA = 8          # peft.LoraConfig default, what the official TLCM loader ends up with
OFFICIAL_RANK = 64
STANDARD_CONFIG_NAME = "adapter_config.json"


@dataclass(frozen=True)
class AdapterConfig:
    """The scale-relevant part of a PEFT LoRA config."""

    r: int | None = None            # None: no config, the tensors' rank is taken as is
    lora_alpha: float = PEFT_DEFAULT_ALPHA
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    target_modules: tuple[str, ...] | str | None = None
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> AdapterConfig:
        """The config's scale fields, each checked: a wrong type or value is an error naming the field."""
        peft_type = str(data.get("peft_type") or "LORA").upper()
        if peft_type != "LORA":
            raise ValueError(f"{source}: peft_type {peft_type!r} is not supported; only plain LoRA (peft_type LORA)")
        for flag in ("use_dora", "lora_bias"):
            if _flag(data, flag, source):
                raise ValueError(f"{source}: {flag}=true is not supported (the adapter is not a plain low-rank delta)")
        return cls(r=_positive_int(data.get("r", PEFT_DEFAULT_R), "r", source),
                   lora_alpha=_positive_number(data.get("lora_alpha", PEFT_DEFAULT_ALPHA), "lora_alpha", source),
                   rank_pattern=_patterns(data, "rank_pattern", _positive_int, source),
                   alpha_pattern=_patterns(data, "alpha_pattern", _positive_number, source),
                   use_rslora=_flag(data, "use_rslora", source), target_modules=_targets(data, source),
                   source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> AdapterConfig:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"adapter config not found: {path}")
        data = read_json(path)
        if not looks_like_lora_config(data):
            raise ValueError(f"{path} is not a PEFT LoRA config (needs r / target_modules / peft_type fields)")
        return cls.from_dict(data, str(path))

    def rank_for(self, name: str) -> int | None:
        return self.rank_pattern.get(pattern_key(self.rank_pattern, name), self.r)

    def alpha_for(self, name: str) -> float:
        return self.alpha_pattern.get(pattern_key(self.alpha_pattern, name), self.lora_alpha)

    def official_scale_warning(self) -> str | None:
        """Why this config's scale differs from what the official TLCM script applies, if it does.

        The official loader builds ``LoraConfig(r=64, target_modules=<TLCM targets>)`` without
        ``lora_alpha`` and loads the weights into it, so it always merges at 8/64 = 0.125.
        """
        targets = self.target_modules
        on_tlcm_targets = isinstance(targets, tuple) and set(targets) == set(TLCM_TARGET_SUFFIXES)
        official_alpha = self.lora_alpha == PEFT_DEFAULT_ALPHA and not self.alpha_pattern
        if not on_tlcm_targets or self.r != OFFICIAL_RANK or official_alpha:
            return None
        official = PEFT_DEFAULT_ALPHA / OFFICIAL_RANK
        return (f"{self.source} says lora_alpha={self.lora_alpha:g} (scale {self.lora_alpha / self.r:g}), but the "
                f"official TLCM inference.py ignores the saved config and applies PEFT's default alpha "
                f"{PEFT_DEFAULT_ALPHA}/{OFFICIAL_RANK} = {official:g}; honouring the config. Pass "
                f"alpha={PEFT_DEFAULT_ALPHA} (CLI --alpha {PEFT_DEFAULT_ALPHA}) to reproduce the official images")

def pattern_key(patterns: Mapping[str, Any], name: str) -> str:
    """PEFT's ``get_pattern_key``: the first pattern matching ``name`` as a dotted suffix, else ``name``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return name


def _field_error(source: str, name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{source}: field {name} must be {expected}, got {value!r} ({type(value).__name__})")


def _positive_int(value: Any, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _field_error(source, name, value, "a positive integer")
    return value


def _positive_number(value: Any, name: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _field_error(source, name, value, "a positive finite number")
    return float(value)


def _flag(data: Mapping[str, Any], name: str, source: str) -> bool:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise _field_error(source, name, value, "true or false")
    return bool(value)


def _patterns(data: Mapping[str, Any], name: str, parse: Callable[[Any, str, str], Any], source: str) -> dict:
    """``rank_pattern``/``alpha_pattern``: regex keys (compiled here so a bad one fails now) to checked values."""
    patterns = data.get(name) or {}
    if not isinstance(patterns, dict):
        raise _field_error(source, name, patterns, "an object of pattern: value")
    for key in patterns:
        try:
            re.compile(rf"(.*\.)?({key})$")        # the form pattern_key matches with
        except re.error as err:
            raise ValueError(f"{source}: field {name} has an invalid regex {key!r} ({err})") from err
    return {key: parse(value, f"{name}[{key!r}]", source) for key, value in patterns.items()}


def _targets(data: Mapping[str, Any], source: str) -> tuple[str, ...] | str | None:
    targets = data.get("target_modules")
    if targets is None or isinstance(targets, str):
        return targets
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise _field_error(source, "target_modules", targets, "a list of module names or a regex string")
    return tuple(targets)


def looks_like_lora_config(data: Any) -> bool:
    return isinstance(data, dict) and ("peft_type" in data or {"r", "target_modules"} <= data.keys())


def _is_named_config(path: Path) -> bool:
    """``adapter_config.json``, or a prefixed one like the official ``lora_model_adapter_config.json``."""
    return path.name.endswith(STANDARD_CONFIG_NAME)


def _lora_config_data(path: Path) -> Any:
    """A named config must be readable; another JSON file is a config only if it reads as one."""
    try:
        return read_json(path)
    except ValueError:
        if _is_named_config(path):
            raise
        return None


def find_adapter_config(folder: Path) -> Path | None:
    """The one LoRA config JSON in ``folder``, whatever its name; ``adapter_config.json`` wins a tie.

    A file named ``*adapter_config.json`` that is not valid JSON is an error, never skipped: the scale
    would silently fall back to PEFT's default alpha.
    """
    found = []
    for path in sorted(folder.glob("*.json")):
        data = _lora_config_data(path)
        if looks_like_lora_config(data):
            found.append(path)
        elif _is_named_config(path):
            raise ValueError(f"{path} is not a PEFT LoRA config (needs r / target_modules / peft_type fields)")
    if len(found) > 1:
        standard = [p for p in found if p.name == STANDARD_CONFIG_NAME]
        if not standard:
            raise ValueError(f"several LoRA configs in {folder}: {[p.name for p in found]}; pass config= "
                             "(CLI --config) to pick one")
        return standard[0]
    return found[0] if found else None
