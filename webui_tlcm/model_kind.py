"""The kind of the loaded checkpoint (ε or v prediction, zero terminal SNR) as the WebUI will sample it.

Read where each host decides it, at the time the Lora extension has just activated (before sampling):

- Forge: the model's predictor (``forge_objects.unet.model.predictor.prediction_type``, ``"epsilon"`` or
  ``"v_prediction"``); zero SNR when the "Noise schedule" setting is "Zero Terminal SNR" or the checkpoint's
  ``model_config.ztsnr`` is set (Forge rescales the predictor's σ table for the sampling on either).
- A1111 / reForge: ``sd_model.parameterization`` (``"eps"`` or ``"v"``, what picks the host's ε or v
  denoiser); zero SNR when the "Noise schedule" setting is "Zero Terminal SNR" (the host rescales ᾱ after
  this point, so the table itself cannot tell yet).

Anything else (a flow model, an unknown host) is None: the LoRA is then not judged, never a false alarm.
"""
from __future__ import annotations

from typing import Any

from tlcm.lora import BaseKind

ZERO_SNR_SETTING, ZERO_SNR_VALUE = "sd_noise_schedule", "Zero Terminal SNR"
_FORGE_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v_prediction"}
_LDM_PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}


def webui_model_kind(sd_model: Any, opts: Any) -> BaseKind | None:
    """The :class:`BaseKind` of ``sd_model`` under the settings ``opts``; None when it cannot be told."""
    zero_snr = getattr(opts, ZERO_SNR_SETTING, None) == ZERO_SNR_VALUE
    objects = getattr(sd_model, "forge_objects", None)
    predictor = getattr(getattr(getattr(objects, "unet", None), "model", None), "predictor", None)
    if predictor is not None:
        prediction = _FORGE_PREDICTIONS.get(getattr(predictor, "prediction_type", None))
        zero_snr = zero_snr or bool(getattr(getattr(sd_model, "model_config", None), "ztsnr", False))
    else:
        prediction = _LDM_PARAMETERIZATIONS.get(getattr(sd_model, "parameterization", None))
    return None if prediction is None else BaseKind(prediction, zero_snr)
