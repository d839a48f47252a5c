"""Nested training state (optimizer, LR scheduler, RNGs, technique states) as a pickle-free file pair.

``<name>.safetensors`` holds the tensors and ``<name>.json`` everything else, so loading a state that
someone else shared never runs an unpickler, which could execute arbitrary code. Both files are written
atomically (``tlcm.files``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tlcm.errors import one_line
from tlcm.files import atomic_save_safetensors, atomic_write_text

TENSOR, TUPLE, DICT = "__tensor__", "__tuple__", "__dict__"
JSON_SCALARS = (type(None), bool, int, float, str)


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts with str/int keys, lists, tuples, tensors, JSON scalars) into a JSON
    skeleton with ``{"__tensor__": name}`` placeholders and the ``{name: tensor}`` they point to.

    JSON alone would turn tuples into lists (torch wants Adam's ``betas`` as a tuple, ``random.setstate``
    a tuple) and int keys into strings (``optimizer.state_dict()["state"]``), so those are tagged
    (``__tuple__``, ``__dict__``) for :func:`unflatten_state` to restore exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            if path in tensors:
                raise ValueError(f"two tensors of the state would be stored as {path!r}")
            tensors[path] = value
            return {TENSOR: path}
        if isinstance(value, tuple):
            return {TUPLE: [walk(v, _join(path, i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, _join(path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v, _join(path, k)) for k, v in value.items()}
            if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
                raise TypeError(f"state keys at {path or '/'} must be str or int, not {sorted(map(repr, value))[:3]}")
            return {DICT: [[k, walk(v, _join(path, k))] for k, v in value.items()]}
        if isinstance(value, JSON_SCALARS):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} (at {path or '/'}) in a checkpoint: tensors, numbers, "
                        "strings, None, lists, tuples and dicts only")

    return walk(state, ""), tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The state :func:`flatten_state` split into ``skeleton`` and ``tensors``."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if skeleton.keys() == {TENSOR}:
        return tensors[skeleton[TENSOR]]
    if skeleton.keys() == {TUPLE}:
        return tuple(unflatten_state(v, tensors) for v in skeleton[TUPLE])
    if skeleton.keys() == {DICT}:
        return {k: unflatten_state(v, tensors) for k, v in skeleton[DICT]}
    return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}


def save_state(folder: Path, name: str, state: Any) -> None:
    """``state`` as ``<name>.safetensors`` (its tensors) and ``<name>.json`` (the rest), each written atomically."""
    skeleton, tensors = flatten_state(state)
    atomic_save_safetensors(folder / f"{name}.safetensors", {k: v.detach().cpu() for k, v in tensors.items()})
    atomic_write_text(folder / f"{name}.json", json.dumps(skeleton))


def load_state(folder: Path, name: str) -> Any:
    """What :func:`save_state` wrote; ``ValueError`` (one line) if the two files are unreadable or do not match."""
    try:
        skeleton = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        return unflatten_state(skeleton, load_file(str(folder / f"{name}.safetensors")))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise ValueError(f"{folder}: {name}.json/.safetensors are unreadable ({one_line(err)})") from err
