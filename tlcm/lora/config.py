"""PEFT ``LoraConfig`` JSON: find it next to the weights, read the fields that set the scale.

The official TLCM release ships ``lora_model_adapter_config.json`` (not ``adapter_config.json``), so the
config is recognised by content. Per-module rank/alpha follow PEFT exactly: ``rank_pattern`` and
``alpha_pattern`` keys are regexes tried in order, the first with ``re.match(rf"(.*\\.)?({key})$", name)``
wins (peft ``utils.other.get_pattern_key``); ``use_rslora`` makes the scale alpha/sqrt(r).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .targets import TLCM_TARGET_SUFFIXES

PEFT_DEFAULT_R = 8
PEFT_DEFAULT_ALPHA = 8          # peft.LoraConfig default, what the official TLCM loader ends up with
OFFICIAL_RANK = 64
STANDARD_CONFIG_NAME = "adapter_config.json"
_MAX_CONFIG_BYTES = 1 << 20


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
        peft_type = str(data.get("peft_type") or "LORA").upper()
        if peft_type != "LORA":
            raise ValueError(f"{source}: peft_type {peft_type!r} is not supported; only plain LoRA (peft_type LORA)")
        for flag in ("use_dora", "lora_bias"):
            if data.get(flag):
                raise ValueError(f"{source}: {flag}=true is not supported (the adapter is not a plain low-rank delta)")
        targets = data.get("target_modules")
        return cls(r=int(data.get("r", PEFT_DEFAULT_R)), lora_alpha=float(data.get("lora_alpha", PEFT_DEFAULT_ALPHA)),
                   rank_pattern={str(k): int(v) for k, v in (data.get("rank_pattern") or {}).items()},
                   alpha_pattern={str(k): float(v) for k, v in (data.get("alpha_pattern") or {}).items()},
                   use_rslora=bool(data.get("use_rslora", False)),
                   target_modules=targets if targets is None or isinstance(targets, str) else tuple(targets),
                   source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> AdapterConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"adapter config not found: {path}")
        data = _read_json(path)
        if data is None or not looks_like_lora_config(data):
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


def looks_like_lora_config(data: Any) -> bool:
    return isinstance(data, dict) and ("peft_type" in data or {"r", "target_modules"} <= data.keys())


def _read_json(path: Path) -> Any:
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def find_adapter_config(folder: Path) -> Path | None:
    """The one LoRA config JSON in ``folder``, whatever its name; ``adapter_config.json`` wins a tie."""
    found = [p for p in sorted(folder.glob("*.json")) if looks_like_lora_config(_read_json(p))]
    if len(found) > 1:
        standard = [p for p in found if p.name == STANDARD_CONFIG_NAME]
        if not standard:
            raise ValueError(f"several LoRA configs in {folder}: {[p.name for p in found]}; pass config= "
                             "(CLI --config) to pick one")
        return standard[0]
    return found[0] if found else None
