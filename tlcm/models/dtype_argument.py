"""The ``from_pretrained`` keyword that sets the weights' dtype, for the installed diffusers/transformers.

Both libraries renamed ``torch_dtype`` to ``dtype`` (diffusers 0.40, transformers 4.56). An older release
ignores ``dtype`` without an error, so fp16 weights stay fp16 and a CPU run fails far from the cause; a
newer one warns on ``torch_dtype`` and drops it at 1.0. Our requirements allow both sides of the rename.
"""
from __future__ import annotations

import re
from importlib.metadata import version

import torch

FIRST_WITH_DTYPE = {"diffusers": (0, 40), "transformers": (4, 56)}


def _major_minor(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"cannot read a version from {text!r}")
    return int(match[1]), int(match[2])


def dtype_argument(library: str, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``{"dtype": dtype}`` where the installed ``library`` knows it, else ``{"torch_dtype": dtype}``."""
    new = _major_minor(version(library)) >= FIRST_WITH_DTYPE[library]
    return {"dtype" if new else "torch_dtype": dtype}
