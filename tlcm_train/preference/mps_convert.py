"""One-off conversion of the released MPS "overall" checkpoint, a pickled whole model, to the safetensors
state dict that :func:`tlcm_train.preference.mps.load_mps_scorer` reads.

Kept apart from the scorer, which reads only plain tensor files: this is the one place that reads a
pickle of objects, through torch's restricted unpickler with inert stand-ins for the pickled classes, so
nothing in the file runs.

    python -m tlcm_train.preference.mps_convert convert MPS_overall_checkpoint.pth mps_overall.safetensors
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig

from tlcm.files import atomic_save_safetensors, check_writable

from .mps import CrossConfig, _layout, check_state_dict, clip_vit_h14_config


class UnsafeCheckpointError(ValueError):
    """Unpickling the file would call something: a pickled module tree only creates objects."""


class _Inert:
    """Stands in for one class or function the pickle names, so neither the MPS repo nor its old
    transformers must be importable. Unpickling makes instances with ``__new__`` and never calls
    ``__init__``; a call of the stand-in itself is the pickle asking to run the named callable."""

    target = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafeCheckpointError(f"it calls {self.target} while being unpickled (nothing was run)")

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:      # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _stand_in(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (_Inert,), {"__module__": module, "target": qualified})


def _load_inert(src: Path) -> Any:
    """``src`` unpickled by torch's restricted (``weights_only``) unpickler, each global it does not
    allow by default mapped to an inert stand-in: tensors are rebuilt, nothing else runs."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(src)
    except ValueError as err:           # a legacy (torch < 1.6) pickle or a TorchScript archive
        raise ValueError(f"refusing to convert {src}: not a zip-format torch.save checkpoint, the only format "
                         f"torch's restricted unpickler reads whole models from ({err})") from None
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to convert {src}: its pickle is not one torch's restricted unpickler "
                         f"reads ({err})") from None
    with torch.serialization.safe_globals([(_stand_in(name), name) for name in names]):
        try:
            return torch.load(src, map_location="cpu", weights_only=True)
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f"refusing to convert {src}: {err}") from None
        except pickle.UnpicklingError as err:   # torch's one-line reason is the error it re-raised
            reason = str(err.__context__ or err).splitlines()[0]
            raise UnsafeCheckpointError(f"refusing to convert {src}: {reason}") from None


def _module_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of an unpickled nn.Module tree (parameters and persistent buffers)."""
    attrs = getattr(obj, "__dict__", {})
    skip = attrs.get("_non_persistent_buffers_set", set())
    out = {prefix + k: p for k, p in attrs.get("_parameters", {}).items() if isinstance(p, torch.Tensor)}
    out.update({prefix + k: b for k, b in attrs.get("_buffers", {}).items()
                if isinstance(b, torch.Tensor) and k not in skip})
    for name, child in attrs.get("_modules", {}).items():
        if child is not None:
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def convert_pickled_checkpoint(src: str | Path, dst: str | Path, clip_config: CLIPConfig | None = None,
                               cross: CrossConfig = CrossConfig(), *, overwrite: bool = False) -> Path:
    """Re-save the released pickled MPS model as a checked safetensors state dict.

    The pickle goes through torch's restricted unpickler only: its classes become inert stand-ins that
    keep their attributes, and a file that would call anything but torch's tensor rebuilding is refused
    (``UnsafeCheckpointError``), as is any format that unpickler cannot read.
    """
    check_writable(dst, overwrite=overwrite)         # before the slow unpickling
    src = Path(src)
    obj = _load_inert(src)
    state = _module_tensors(obj) if hasattr(obj, "__dict__") and "_modules" in obj.__dict__ else obj
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{src} holds neither an nn.Module nor a state dict")
    state = check_state_dict(state, _layout((clip_config or clip_vit_h14_config(), cross)))
    return atomic_save_safetensors(dst, {k: v.detach() for k, v in state.items()},
                                   {"format": "mps-state-dict", "source": src.name}, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert the released MPS checkpoint.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="re-save the released pickled MPS model as a safetensors state dict "
                             "(read with torch's restricted unpickler: tensors only, nothing runs)")
    convert.add_argument("src", type=Path)
    convert.add_argument("dst", type=Path)
    convert.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        out = convert_pickled_checkpoint(args.src, args.dst, overwrite=args.force)
    except (ValueError, OSError) as err:
        raise SystemExit(f"mps convert: {err}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
