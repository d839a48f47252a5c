"""``load_sdxl_pipeline``: one entry point for every local SDXL model format, strictly offline."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError

from ..file_readers import PICKLE_SUFFIXES
from .configs import single_file_config
from .detect import DOWNLOAD_HINT, check_sdxl_folder, inspect_single_file
from .device import auto_device_dtype
from .dtype_argument import dtype_argument

PIPELINE_KINDS = ("txt2img", "img2img")

# What diffusers/transformers raise on a folder whose component files are missing, truncated or garbled
# (OSError: missing files or invalid JSON; SafetensorError: damaged weights; TypeError/ValueError: configs
# with wrong types or classes; RuntimeError/KeyError: weights that do not fit the config).
DAMAGED_FOLDER_ERRORS = (OSError, SafetensorError, ValueError, TypeError, KeyError, RuntimeError)


def _fp16_variant(folder: Path) -> str | None:
    """Hub downloads with ``variant="fp16"`` hold only ``*.fp16.safetensors`` weights."""
    unet = folder / "unet"
    if not any(unet.glob("diffusion_pytorch_model.safetensors*")) and any(unet.glob("*.fp16.safetensors")):
        return "fp16"
    return None


def _resolve(path: Path) -> str:
    """'folder' or 'single_file'; raise a helpful error for anything else."""
    if not path.exists():
        raise FileNotFoundError(f"No SDXL model at {path}. {DOWNLOAD_HINT}")
    if path.is_dir():
        check_sdxl_folder(path)
        return "folder"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle checkpoint ({path.suffix}); only .safetensors single files are "
                         "loaded (pickles can run code). Use the .safetensors release of the model.")
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path} is not a model: pass a diffusers SDXL folder or a .safetensors checkpoint.")
    return "single_file"


def _check_complete(pipe: Any, path: Path) -> None:
    """diffusers leaves tensors absent from a single file on the meta device, and transformers builds a
    near-empty tokenizer from a folder without its files, instead of failing."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            empty = [k for k, t in component.state_dict().items() if t.is_meta]
            if empty:
                raise ValueError(f"{path}: {name} tensors missing from the checkpoint ({empty[:3]}...); the file "
                                 "is incomplete or its configs do not match it.")
    for tokenizer, encoder in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        known, embedded = len(pipe.components[tokenizer]), pipe.components[encoder].config.vocab_size
        if known < embedded:
            raise ValueError(f"{path}: {tokenizer} knows {known} tokens but {encoder} embeds {embedded}; the "
                             "tokenizer files are missing or damaged: re-download the model.")


def _own_cpu_memory(pipe: Any) -> None:
    """Copy CPU weights out of the memory-mapped safetensors files.

    Mapped tensors sit at arbitrary offsets, which sends CPU kernels down differently vectorised paths
    (a folder and a single-file load then differ in the last bits) and keeps the files mapped.
    """
    with torch.no_grad():
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in [*component.parameters(), *component.buffers()]:
                    if tensor.device.type == "cpu":
                        tensor.data = tensor.data.clone()


def _controlnet_model(controlnet: Any, dtype: torch.dtype):
    if not isinstance(controlnet, (str, os.PathLike)):
        return controlnet   # a ControlNetModel / MultiControlNetModel instance
    from diffusers import ControlNetModel
    folder = Path(controlnet).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No ControlNet at {folder}: pass a local diffusers ControlNet folder "
                                "(config.json + diffusion_pytorch_model.safetensors) or a ControlNetModel.")
    return ControlNetModel.from_pretrained(folder, **dtype_argument("diffusers", dtype), local_files_only=True)


def _specialize(base: Any, pipeline: str, controlnet: Any, dtype: torch.dtype) -> Any:
    """The requested pipeline class over the already loaded components (no weights are copied)."""
    from diffusers import (StableDiffusionXLControlNetImg2ImgPipeline, StableDiffusionXLControlNetPipeline,
                           StableDiffusionXLImg2ImgPipeline)
    if controlnet is None and pipeline == "txt2img":
        return base
    kwargs = dict(base.components, force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt)
    if controlnet is None:
        return StableDiffusionXLImg2ImgPipeline(**kwargs)
    cls = StableDiffusionXLControlNetPipeline if pipeline == "txt2img" else StableDiffusionXLControlNetImg2ImgPipeline
    controlnet = _controlnet_model(controlnet, dtype)
    if controlnet.dtype != dtype:
        controlnet = controlnet.to(dtype=dtype)
    return cls(**kwargs, controlnet=controlnet)


@contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 while loading (restored after), on top of local_files_only and local configs."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _load_base(path: Path, kind: str, dtype: torch.dtype, config: str | os.PathLike | None) -> Any:
    from diffusers import StableDiffusionXLPipeline
    if kind == "folder":
        if config is not None:
            raise ValueError(f"config= only applies to single-file checkpoints; {path} is a diffusers folder "
                             "with its own configs.")
        try:
            return StableDiffusionXLPipeline.from_pretrained(path, **dtype_argument("diffusers", dtype),
                                                             local_files_only=True,
                                                             variant=_fp16_variant(path))
        except DAMAGED_FOLDER_ERRORS as err:
            raise ValueError(f"{path} could not be loaded ({type(err).__name__}: {err}); a component's files are "
                             "missing or damaged: re-download the model.") from err
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    with single_file_config(inspect_single_file(path), config) as config_dir:
        try:
            return StableDiffusionXLPipeline.from_single_file(str(path), config=str(config_dir),
                                                              **dtype_argument("diffusers", dtype),
                                                              local_files_only=True)
        except (KeyError, RuntimeError, SingleFileComponentError) as err:   # diffusers' conversion errors
            raise ValueError(f"{path} could not be converted with the configs in {config_dir} "
                             f"({type(err).__name__}: {err}); the file is incomplete or its sizes do not "
                             "match those configs.") from err


def load_sdxl_pipeline(path: str | os.PathLike, *, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, pipeline: str = "txt2img", controlnet: Any = None,
                       config: str | os.PathLike | None = None) -> Any:
    """Load a local SDXL base model (diffusers folder or single-file ``.safetensors``); never downloads.

    ``device``/``dtype`` default to :func:`auto_device_dtype`. ``pipeline`` picks txt2img or img2img;
    ``controlnet`` (a ``ControlNetModel`` or a local diffusers ControlNet folder) gives the ControlNet
    variant. ``config`` is a diffusers folder with the component configs of a single file whose sizes
    differ from SDXL base (see :mod:`tlcm.models.configs`).
    """
    if pipeline not in PIPELINE_KINDS:
        raise ValueError(f"pipeline must be one of {PIPELINE_KINDS}, got {pipeline!r}")
    device, auto_dtype = auto_device_dtype(device)
    dtype = dtype or auto_dtype
    path = Path(path).expanduser()
    kind = _resolve(path)
    with offline():
        base = _load_base(path, kind, dtype, config)
        _check_complete(base, path)
        pipe = _specialize(base, pipeline, controlnet, dtype).to(device)
    _own_cpu_memory(pipe)
    return pipe
