"""Read files from users and the internet (tensors, small JSON configs), trusting nothing in them.

Pickles load with ``weights_only=True`` (no code runs); whatever a damaged file makes the underlying readers
raise becomes one ``ValueError`` that names the file, and ``check_values`` refuses tensors no weight can hold
(integers, NaN, Inf).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import check_finite, one_line

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TENSOR_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_JSON_BYTES = 1 << 20        # configs are a few KB; a bigger file is not one


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as err:      # safetensors' own SafetensorError and OSError/ValueError/... from the header
        raise ValueError(f"cannot read {path} as safetensors ({one_line(err)}); "
                         "the file is damaged or not safetensors") from err


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors header ({} for other formats); the tensors are not read."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:      # as _load_safetensors: any header failure is a damaged file
        raise ValueError(f"cannot read {path} as safetensors ({one_line(err)}); "
                         "the file is damaged or not safetensors") from err


def _load_pickle(path: Path, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:      # the unpickler raises anything from UnpicklingError to KeyError on bad bytes
        raise ValueError(f"cannot load {path} with torch.load(weights_only=True): {one_line(err)}. "
                         "Damaged files and pickles that need code are refused; use .safetensors") from err


def read_state_dict(path: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a pickle holding a dict of tensors (or ``{"state_dict": ...}``).

    Plain numbers in a pickle become 0-d float tensors (old LoRA tools store ``alpha`` that way).
    ``mmap`` maps a (zip-format) pickle instead of reading it, for multi-GB text models.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a tensor file ({', '.join(TENSOR_SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"tensor file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'}; use .safetensors "
                         f"(or a tensor-only pickle: {', '.join(PICKLE_SUFFIXES)})")
    data = _load_pickle(path, mmap)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict of tensors")
    bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, (torch.Tensor, int, float))]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:3]}")
    return {str(k): v if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for k, v in data.items()}


def check_values(state: Mapping[str, torch.Tensor], source: str, *, number_suffixes: tuple[str, ...] = ()) -> None:
    """Every tensor is floating point and finite; keys ending in ``number_suffixes`` hold one real number.

    Weights that are integers or booleans are a damaged or foreign file, and NaN/Inf weights turn every
    image black, so both are refused here, naming the tensor, rather than at sampling time.
    """
    for key, tensor in state.items():
        if key.endswith(number_suffixes):
            if tensor.numel() != 1 or tensor.dtype == torch.bool or tensor.is_complex():
                raise ValueError(f"{source}: {key!r} must be a single real number, got a {tensor.dtype} tensor "
                                 f"of shape {tuple(tensor.shape)}")
        elif tensor.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{source}: tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                             "weights must be float16, bfloat16, float32 or float64")
        check_finite(tensor, f"{source}: tensor {key!r}", "the file is damaged or was saved from a diverged run")


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; a ``ValueError`` naming the file unless it is a small readable JSON file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, too large for a JSON config")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not a readable JSON file ({err})") from err
