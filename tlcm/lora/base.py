"""The kind of base model a TLCM LoRA was distilled from, as the trainer records it in the file's
safetensors metadata, and the one-line warning when the LoRA meets a model of another kind.

A consistency LoRA learns its base's parameterisation (ε or v) on its base's noise schedule. On a model
of the other kind each step reads the output wrongly, which shows only as broken images, so a host says
so up front. Files without the record (the official weights, other tools' exports) are not judged.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PREDICTION_KEY = "tlcm.base.prediction_type"
ZERO_SNR_KEY = "tlcm.base.zero_terminal_snr"


@dataclass(frozen=True)
class BaseKind:
    """What a LoRA's steps assume about the model: its prediction type and whether ᾱ reaches 0 at T."""

    prediction_type: str
    zero_terminal_snr: bool = False

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> BaseKind:
        """The kind of a diffusers model, read from its scheduler config (SDXL's defaults where absent)."""
        return cls(str(config.get("prediction_type", "epsilon")), bool(config.get("rescale_betas_zero_snr", False)))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str] | None) -> BaseKind | None:
        """The record of a LoRA file's metadata; None when the file carries none."""
        if not metadata or PREDICTION_KEY not in metadata:
            return None
        return cls(metadata[PREDICTION_KEY], metadata.get(ZERO_SNR_KEY) == "true")

    def to_metadata(self) -> dict[str, str]:
        return {PREDICTION_KEY: self.prediction_type, ZERO_SNR_KEY: "true" if self.zero_terminal_snr else "false"}

    def describe(self) -> str:
        return self.prediction_type + (" with zero terminal SNR" if self.zero_terminal_snr else "")


def base_mismatch(lora_base: BaseKind | None, model: BaseKind, lora_name: str) -> str | None:
    """A one-line warning when ``lora_name`` was distilled from another kind of model than ``model``."""
    if lora_base is None or lora_base == model:
        return None
    return (f"{lora_name} was distilled from a {lora_base.describe()} model, but this model is "
            f"{model.describe()}: its steps will misread the model's output (expect broken images); use a LoRA "
            "distilled from this kind of model")
