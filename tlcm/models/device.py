"""One rule for device and precision, so the CLI, demos and hosts pick the same defaults."""
from __future__ import annotations

import torch

DTYPE_NAMES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
"""The dtype names every config, CLI and UI option uses."""


def auto_device_dtype(device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) to run SDXL on: CUDA → bf16 where supported else fp16, MPS → fp16, CPU → fp32.

    Half precision halves memory and time on accelerators; CPUs lack fast half kernels. With ``device``
    given only the dtype is chosen.
    """
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return device, torch.float16
    return device, torch.float32
