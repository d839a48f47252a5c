"""Component configs for single-file checkpoints, found locally so ``from_single_file`` never hits the hub.

diffusers needs a diffusers-layout config folder next to the weights of a single file; by default it
downloads SDXL base's from the hub. In order: an explicit ``config=`` folder, a ``<checkpoint>.config/``
folder beside the file (how the tiny kit ships its own small configs), or, for SDXL-base-sized weights,
the configs bundled in ``tlcm/configs/sdxl_base`` plus the two CLIP tokenizers generated from the
open_clip BPE file.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .detect import SDXL_BASE_WIDTHS, SingleFileInfo, check_sdxl_folder

SDXL_BASE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sdxl_base"


def sibling_config_dir(checkpoint: Path) -> Path:
    """``model.safetensors`` → ``model.config/``: a config folder that travels with the checkpoint."""
    return checkpoint.with_suffix(".config")


@contextmanager
def _bundled_sdxl_base_config() -> Iterator[Path]:
    from .clip_tokenizer import write_clip_tokenizer
    if not (SDXL_BASE_CONFIG / "model_index.json").is_file():
        raise FileNotFoundError(f"The bundled SDXL configs are missing from {SDXL_BASE_CONFIG}; reinstall tlcm.")
    with tempfile.TemporaryDirectory(prefix="tlcm-sdxl-config-") as tmp:
        folder = Path(tmp)
        shutil.copytree(SDXL_BASE_CONFIG, folder, dirs_exist_ok=True)
        write_clip_tokenizer(folder / "tokenizer")
        write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")   # SDXL pads its bigG prompts with "!"
        yield folder


@contextmanager
def single_file_config(info: SingleFileInfo, config: str | Path | None = None) -> Iterator[Path]:
    """Yield a local diffusers config folder matching the checkpoint described by ``info``."""
    if config is not None:
        folder = Path(config).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"config {folder} does not exist: pass a local diffusers SDXL folder whose "
                                    "component configs match the checkpoint.")
        check_sdxl_folder(folder)
        yield folder
        return
    sibling = sibling_config_dir(info.path)
    if sibling.is_dir():
        check_sdxl_folder(sibling)
        yield sibling
        return
    if not info.is_sdxl_base_sized:
        raise ValueError(
            f"{info.path} has SDXL's layout but not SDXL base's size (UNet/CLIP-L/bigG widths {info.widths}, "
            f"SDXL base has {SDXL_BASE_WIDTHS}), so the bundled SDXL configs do not fit. Pass config=<diffusers "
            f"folder with matching configs> or place that folder at {sibling}.")
    with _bundled_sdxl_base_config() as folder:
        yield folder
