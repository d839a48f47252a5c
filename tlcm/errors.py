"""Errors the core raises for bad numbers, shared by the loaders, the samplers and every host.

``NonFiniteError`` is both a ``FloatingPointError`` (numbers blew up) and a ``ValueError`` (the input, a
file or a model, is unusable), so hosts and CLIs that report ``ValueError`` as a user error report it too.
"""
from __future__ import annotations

import torch

SAMPLING_HINT = ("the model produced NaN/Inf, so the image would be black: run in bfloat16 or float32 rather than "
                 "float16, lower the LoRA strength, or check the model and LoRA files")


class NonFiniteError(FloatingPointError, ValueError):
    """NaN or Inf where finite numbers are required: a file's tensors, a latent or image during sampling."""


def check_finite(x: torch.Tensor, what: str, hint: str = "") -> None:
    """Raise ``NonFiniteError`` saying ``what`` holds NaN/Inf (and ``hint``).

    Cheap enough for every sampling step: NaN and Inf propagate through a float32 sum, one reduction and one
    device sync (on CPU ~10x faster than ``isfinite(x).all()`` for an SDXL latent). Only a non-finite sum,
    which huge finite values can also give, pays for the exact per-element test.
    """
    if not bool(torch.isfinite(x.sum(dtype=torch.float32))) and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{what} holds NaN or Inf values" + (f": {hint}" if hint else ""))


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (messages that quote other tools' errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__
