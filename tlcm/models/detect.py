"""Tell what sits at a model path before loading it, so a wrong file fails fast with a useful message.

A diffusers folder is recognised by ``model_index.json``; a single-file checkpoint by its tensor names
(read from the safetensors header only, nothing is loaded). SDXL single files carry the UNet under
``model.diffusion_model.``, CLIP-L under ``conditioner.embedders.0.transformer.`` and OpenCLIP bigG under
``conditioner.embedders.1.model.``; SD 1.x/2.x use ``cond_stage_model.``, the SDXL refiner has only bigG.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..file_readers import read_json

DOWNLOAD_HINT = ("Download e.g. stabilityai/stable-diffusion-xl-base-1.0 (diffusers folder) or "
                 "sd_xl_base_1.0.safetensors and pass its local path.")
SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")

UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_L_POSITIONS_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
BIGG_POSITIONS_KEY = "conditioner.embedders.1.model.positional_embedding"
SDXL_BASE_WIDTHS = (320, 768, 1280)   # UNet conv_in channels, CLIP-L width, OpenCLIP bigG width


@dataclass(frozen=True)
class SingleFileInfo:
    """Widths that decide which component configs fit a single-file SDXL checkpoint."""
    path: Path
    unet_channels: int
    clip_l_width: int
    bigg_width: int

    @property
    def widths(self) -> tuple[int, int, int]:
        return self.unet_channels, self.clip_l_width, self.bigg_width

    @property
    def is_sdxl_base_sized(self) -> bool:
        return self.widths == SDXL_BASE_WIDTHS


def _not_sdxl(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} is {what}; TLCM needs an SDXL base model. {DOWNLOAD_HINT}")


def _read_index(index_file: Path) -> dict:
    try:
        index = read_json(index_file)
    except ValueError as err:
        raise ValueError(f"{err}; re-download the model.") from err
    if not isinstance(index, dict):
        raise ValueError(f"{index_file} holds a JSON {type(index).__name__}, not an object; re-download the model.")
    return index


def _declared(index: dict, component: str, index_file: Path) -> bool:
    """model_index.json lists ``component`` as a ``[library, class]`` pair (absent or ``[null, null]``: not)."""
    entry = index.get(component)
    if entry is None or entry == [None, None]:
        return False
    if isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
        return True
    raise ValueError(f"{index_file}: {component!r} is {entry!r}, not a [library, class] pair; re-download the model.")


def _check_weight_headers(folder: Path) -> None:
    """Open the header of every component's .safetensors file: truncated or garbled ones fail here, named."""
    from safetensors import safe_open
    for path in sorted(folder.glob("*/*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:   # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{path} is damaged ({err}); re-download the model.") from err


def check_sdxl_folder(path: Path) -> None:
    """Raise unless ``path`` is a complete diffusers SDXL base pipeline folder with readable weight headers."""
    index_file = path / "model_index.json"
    if not index_file.is_file():
        parent_hint = (f" {path.parent} has one: pass that folder instead."
                       if (path.parent / "model_index.json").is_file() else "")
        raise ValueError(f"{path} is a folder but not a diffusers pipeline (no model_index.json).{parent_hint} "
                         "Pass the folder that contains model_index.json, or a single-file .safetensors checkpoint.")
    index = _read_index(index_file)
    class_name = str(index.get("_class_name", ""))
    if _declared(index, "text_encoder_2", index_file) and not _declared(index, "text_encoder", index_file):
        raise _not_sdxl(path, "an SDXL refiner (one text encoder)")
    if not class_name.startswith("StableDiffusionXL"):
        what = ("a Stable Diffusion 1.x/2.x pipeline" if class_name.startswith("StableDiffusion")
                else f"a {class_name or 'pipeline of unknown type'}")
        raise _not_sdxl(path, f"{what} ({class_name or 'no _class_name'})")
    missing = [c for c in SDXL_COMPONENTS if not _declared(index, c, index_file) or not (path / c).is_dir()]
    if missing:
        raise ValueError(f"{path} is an incomplete SDXL folder: missing {', '.join(missing)}. "
                         "Re-download the whole model repository.")
    _check_weight_headers(path)


def inspect_single_file(path: Path) -> SingleFileInfo:
    """Classify a .safetensors checkpoint by its header; raise a clear error unless it is SDXL base-like."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            shapes = {k: tuple(handle.get_slice(k).get_shape())
                      for k in (UNET_IN_KEY, CLIP_L_POSITIONS_KEY, BIGG_POSITIONS_KEY) if k in keys}
    except Exception as err:   # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable .safetensors file ({err}).") from err
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        if any("lora" in k.lower() for k in keys):
            raise ValueError(f"{path} is a LoRA, not a base model: pass an SDXL checkpoint as the model "
                             "and the LoRA separately.")
        if any(k.startswith(("conv_in.", "down_blocks.", "encoder.", "text_model.")) for k in keys):
            raise ValueError(f"{path} holds one diffusers component, not a whole model: pass the pipeline "
                             "folder that contains model_index.json.")
        raise _not_sdxl(path, "not a Stable Diffusion checkpoint (no model.diffusion_model.* tensors)")
    if any(k.startswith("cond_stage_model.") for k in keys):
        raise _not_sdxl(path, "a Stable Diffusion 1.x/2.x checkpoint")
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise _not_sdxl(path, "an SDXL refiner checkpoint (one text encoder)")
    missing = [name for name, key in (("CLIP-L", CLIP_L_POSITIONS_KEY), ("OpenCLIP bigG", BIGG_POSITIONS_KEY))
               if key not in shapes]
    if missing or UNET_IN_KEY not in shapes:
        raise ValueError(f"{path} lacks {', '.join(missing) or 'the UNet input layer'}: TLCM needs a full SDXL "
                         f"checkpoint (UNet, VAE and both text encoders). {DOWNLOAD_HINT}")
    info = SingleFileInfo(path, shapes[UNET_IN_KEY][0], shapes[CLIP_L_POSITIONS_KEY][-1],
                          shapes[BIGG_POSITIONS_KEY][-1])
    if info.clip_l_width == info.bigg_width:
        raise ValueError(
            f"{path}: both text encoders are {info.bigg_width} wide, so diffusers' single-file loader cannot "
            "tell CLIP-L from OpenCLIP bigG (it dispatches on width). Load it as a diffusers folder, or give "
            "the encoders different widths as SDXL does (768 and 1280).")
    return info
