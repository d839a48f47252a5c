"""Virtual environments pinned like real hosts, built from the package registries at test time.

Each venv is built once into the git-ignored ``.cache/host-venvs/<name>-<key>`` (the key hashes the pins
and the Python version), in a scratch folder renamed into place when complete, so an interrupted build
is never reused. Tests then install the extension into it the way the host does and compare what pip
reports before and after. ``HostVenvUnavailable`` carries the reason when the registries cannot be
reached; outside CI the tests skip with it, in CI they fail.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "host-venvs"

# AUTOMATIC1111 v1.10.1: torch 2.1.2 (its TORCH_COMMAND) and the requirements_versions.txt pins of every
# package our dependency graph touches; huggingface_hub is unpinned there (transformers 4.30.2 needs < 1).
# torchsde and scipy are what A1111's k-diffusion sampling module imports.
A1111_PINS = (
    "torch==2.1.2", "transformers==4.30.2", "tokenizers==0.13.3", "accelerate==0.21.0", "safetensors==0.4.2",
    "numpy==1.26.2", "fastapi==0.94.0", "pydantic<2", "huggingface_hub<1", "Pillow==9.5.0", "einops==0.4.1",
    "psutil==5.9.5", "protobuf==3.20.0", "httpx==0.24.1", "torchsde==0.2.6", "tqdm",
)
# The k-diffusion release whose sampling.py/external.py equal A1111's pinned k-diffusion (loaded by path).
K_DIFFUSION = "k-diffusion==0.1.1.post1"


class HostVenvUnavailable(RuntimeError):
    """The venv could not be built (registry unreachable, no wheel); the message is the reason."""


def venv_python(folder: Path) -> Path:
    return folder / "bin" / "python"


def _key(pins: tuple[str, ...]) -> str:
    text = json.dumps([sys.version_info[:2], sorted(pins)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostVenvUnavailable(f"pip {' '.join(args[:3])}... failed: {proc.stderr.strip()[-400:]}")


def host_venv(name: str, pins: tuple[str, ...], *extra_no_deps: str) -> Path:
    """The Python of a venv holding exactly ``pins`` (and ``extra_no_deps`` installed without dependencies)."""
    folder = CACHE / f"{name}-{_key((*pins, *extra_no_deps))}"
    if not venv_python(folder).is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"building-{name}-", dir=CACHE))
        try:
            venv.create(scratch, with_pip=True)
            _pip(venv_python(scratch), "install", "-q", *pins)
            if extra_no_deps:
                _pip(venv_python(scratch), "install", "-q", "--no-deps", *extra_no_deps)
            os.replace(scratch, folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return venv_python(folder)


def installed(python: Path) -> dict[str, str]:
    """Distribution name (lower case) -> version, as pip of that venv reports it."""
    proc = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=True)
    return {item["name"].lower(): item["version"] for item in json.loads(proc.stdout)}
