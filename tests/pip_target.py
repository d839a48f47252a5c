"""Reference packages for parity tests, installed with ``pip --target`` into the git-ignored ``.cache/``
(never into the environment) and imported only by subprocesses that put that folder first on their path."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

CACHE = Path(__file__).resolve().parents[1] / ".cache"


class ReferenceUnavailable(RuntimeError):
    """pip could not fetch a reference package; the message is the reason."""


def torchvision_requirement() -> str:
    """The torchvision that pairs with the installed torch (its minor version is torch's + 15)."""
    major, minor = map(int, re.match(r"(\d+)\.(\d+)", version("torch")).groups())
    return f"torchvision=={major - 2}.{minor + 15}.*"


def installed(name: str, requirements: list[str], marker: str) -> Path:
    """``.cache/<name>/<requirements slug>`` holding ``requirements`` (installed without their dependencies,
    which the environment provides); ``marker`` is a path inside it that exists once the install is done."""
    folder = CACHE / name / re.sub(r"[^0-9a-z.]+", "-", " ".join(requirements).lower())
    if not (folder / marker).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="installing-", dir=folder.parent))
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(scratch),
                               *requirements], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ReferenceUnavailable(f"pip could not install {' '.join(requirements)}: {proc.stderr.strip()[-300:]}")
        try:
            scratch.rename(folder)
        except OSError:            # another run finished first
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


def run_reference(folder: Path, script: str, args: list[str], what: str) -> str:
    """``script`` in a fresh interpreter with ``folder`` first on its path; its stdout, or ``ReferenceUnavailable``
    saying why it did not run."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise ReferenceUnavailable(f"{what} did not run: {proc.stderr.strip()[-600:]}")
    return proc.stdout
