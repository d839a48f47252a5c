"""Path checks for everything a user types into the app, and confinement for everything it reads back.

The app runs with the user's rights and may be reachable by others (``--host``), so it only reads what
a path field points at: a model, prompt files, a config file, a LoRA, and files *inside* the chosen
output folder (resolved, so a symlink in ``samples/`` cannot lead elsewhere). Each check returns the
absolute path or raises ``PathError`` with a sentence the UI shows as is.
"""
from __future__ import annotations

from pathlib import Path

from tlcm.models.detect import check_sdxl_folder, inspect_single_file
from tlcm_train.config import CONFIG_SUFFIXES
from tlcm_train.prompts import PROMPT_SUFFIXES, PromptFileError, read_prompts

from .limits import check_text

LORA_SUFFIXES = (".safetensors",)


class PathError(ValueError):
    """A path field is empty, missing, of the wrong kind, or escapes the folder it must stay in."""


def _absolute(raw: str | Path, what: str) -> Path:
    text = check_text(what, str(raw).strip())
    if not text:
        raise PathError(f"{what}: empty — type a path")
    return Path(text).expanduser().resolve()


def check_model(raw: str | Path) -> Path:
    """A local SDXL base model: a diffusers folder (``model_index.json``) or one ``.safetensors`` file."""
    path = _absolute(raw, "Base model")
    if path.is_dir():
        checker = check_sdxl_folder
    elif path.is_file() and path.suffix.lower() == ".safetensors":
        checker = inspect_single_file
    elif path.is_file():
        raise PathError(f"Base model: {path} is a {path.suffix or 'suffix-less'} file; use a diffusers folder "
                        "(with model_index.json) or a single-file .safetensors checkpoint")
    else:
        raise PathError(f"Base model: {path} does not exist")
    try:
        checker(path)
    except ValueError as err:
        raise PathError(f"Base model: {err}") from err
    return path


def check_prompt_files(raws: list[str]) -> tuple[list[Path], int]:
    """Existing .txt/.jsonl/.csv prompt files and how many prompts they hold (read once to fail early)."""
    paths = [_absolute(raw, "Prompts file") for raw in raws if str(raw).strip()]
    if not paths:
        raise PathError(f"Prompts file: give at least one {'/'.join(PROMPT_SUFFIXES)} file")
    for path in paths:
        if path.is_dir():
            raise PathError(f"Prompts file: {path} is a folder; pick a {'/'.join(PROMPT_SUFFIXES)} file")
    try:
        return paths, len(read_prompts(paths))
    except PromptFileError as err:
        raise PathError(f"Prompts file: {err}") from err


def check_output_dir(raw: str | Path) -> Path:
    """A folder to write into: existing or creatable, never an existing file."""
    path = _absolute(raw, "Output folder")
    if path.exists() and not path.is_dir():
        raise PathError(f"Output folder: {path} is a file, not a folder")
    if path == Path(path.anchor) or path == Path.home().resolve():
        raise PathError(f"Output folder: {path} is too broad; use a dedicated folder, e.g. {path / 'tlcm-run'}")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise PathError(f"Output folder: {existing} is a file, so {path} cannot be created")
    return path


def file_in_folder(folder: str | Path, name: str | Path, what: str) -> Path:
    """``name`` inside ``folder`` (an existing folder), resolved: ``PathError`` when it leads out of it —
    by ``..`` steps, as an absolute path elsewhere, or through a symlink pointing outside."""
    root = _absolute(folder, f"{what} folder")
    if not root.is_dir():
        raise PathError(f"{what} folder: {root} is not an existing folder")
    text = check_text(what, str(name).strip())
    if not text:
        raise PathError(f"{what}: empty — type a file name")
    path = (root / Path(text).expanduser()).resolve()        # an absolute name replaces root here
    if path == root or not path.is_relative_to(root):
        raise PathError(f"{what}: {text} leads outside the folder {root}; give a file name inside it")
    return path


def check_config_file(raw: str | Path, *, must_exist: bool) -> Path:
    """A YAML/TOML config file the CLI can read (``--config``)."""
    path = _absolute(raw, "Config file")
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise PathError(f"Config file: {path.name} must end in {', '.join(CONFIG_SUFFIXES)}")
    if must_exist and not path.is_file():
        raise PathError(f"Config file: {path} does not exist")
    if not must_exist and path.is_dir():
        raise PathError(f"Config file: {path} is a folder")
    return path


def check_scorer_weights(raw: str | Path, kind: str) -> Path:
    """The preference scorer's local weights file (stages 3-4): it exists, has a suffix its ``kind``
    loads, and a ``.safetensors`` header (read, nothing else) names the tensors that scorer expects —
    so the toy scorer's file left in the field under the ``mps`` kind is caught before launching."""
    from tlcm_train.preference.scorer import ScorerError, resolve_scorer
    try:
        plugin = resolve_scorer(kind)
    except ScorerError as err:
        raise PathError(f"Preference scorer: {err}") from err
    what = f"Scorer weights ({plugin.name})"
    path = _absolute(raw, what)
    if path.is_dir():
        raise PathError(f"{what}: {path} is a folder; pick the weights file ({'/'.join(plugin.suffixes)})")
    if not path.is_file():
        raise PathError(f"{what}: {path} does not exist ({plugin.missing_hint or 'check the path'}; or turn "
                        "stages 3-4 off)")
    if path.suffix.lower() not in plugin.suffixes:
        raise PathError(f"{what}: {path.name} must end in {', '.join(plugin.suffixes)}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
        except Exception as err:        # safetensors raises its own error types for a bad header
            raise PathError(f"{what}: {path} is not a readable .safetensors file ({err})") from err
        missing = sorted(plugin.tensor_names() - keys)
        if missing:
            raise PathError(f"{what}: {path.name} is not a {plugin.name} scorer ({len(missing)} of its tensors "
                            f"are missing, e.g. {', '.join(missing[:2])}); check the scorer kind and file")
    return path


def check_lora(raw: str | Path) -> Path:
    """A LoRA: a .safetensors file (kohya/diffusers/PEFT weights) or a PEFT adapter folder."""
    path = _absolute(raw, "LoRA")
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise PathError(f"LoRA: {path} is a folder without adapter_config.json (not a PEFT adapter)")
    elif not path.is_file():
        raise PathError(f"LoRA: {path} does not exist (train first, or point at any TLCM LoRA)")
    elif path.suffix.lower() not in LORA_SUFFIXES:
        raise PathError(f"LoRA: {path.name} must be a .safetensors file or a PEFT adapter folder")
    return path


def inside(root: Path, relative: str | Path) -> Path | None:
    """``root / relative`` with symlinks resolved, or None when that leaves ``root`` (or does not exist)."""
    root = root.resolve()
    try:
        path = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return path if path.is_relative_to(root) else None


def files_inside(root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` under ``root`` that really live under ``root``, sorted by name."""
    if not root.is_dir():
        return []
    found = (inside(root, p.relative_to(root)) for p in sorted(root.glob(pattern)))
    return [p for p in found if p is not None and p.is_file()]
