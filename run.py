"""Quickstart: ``python run.py demo`` runs the main job, ``python run.py test`` the whole test suite.

Each installs what it needs into the current Python first: torch only if none is importable (a host's
CUDA torch is never replaced), then the missing packages of requirements.txt (via install.py, the same
step the WebUI runs) and open-clip-torch's vocabulary file, then (for tests) the test-only tools.
Nothing else is downloaded: models are built offline.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH_FALLBACK = "torch==2.13.0"
# Read for one data file (the CLIP BPE vocabulary behind the tiny kit and offline single-file loading);
# installed without its dependency tree (timm, torchvision), which would drag in a second torch build.
DATA_PACKAGES = {"open_clip": "open-clip-torch==3.3.0"}
# Test-only. k-diffusion: its two sampler files are imported by path (its __init__ needs torchvision, clip...).
TEST_NO_DEPS_PACKAGES = {"k_diffusion": "k-diffusion==0.1.1.post1"}
TEST_PACKAGES = {"pytest": "pytest>=8", "gradio": "gradio>=6,<7", "playwright": "playwright==1.65.2"}


def pip_install(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args])


def ensure_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        print(f"[run.py] no torch found: installing {TORCH_FALLBACK} (install your own CUDA build first to "
              "use a GPU)", flush=True)
        pip_install(TORCH_FALLBACK)


def ensure_requirements() -> None:
    subprocess.check_call([sys.executable, str(ROOT / "install.py")], cwd=ROOT)


def install_missing(packages: dict[str, str], *pip_args: str) -> None:
    """Install the requirements whose module is not importable (``packages``: module -> requirement)."""
    need = [req for module, req in packages.items() if importlib.util.find_spec(module) is None]
    if need:
        pip_install(*pip_args, *need)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_torch()
    ensure_requirements()
    install_missing(DATA_PACKAGES, "--no-deps")
    if argv[0] == "demo":
        return subprocess.call([sys.executable, "-m", "train.toy.demo", *argv[1:]], cwd=ROOT)
    install_missing(TEST_PACKAGES)
    install_missing(TEST_NO_DEPS_PACKAGES, "--no-deps")
    return subprocess.call([sys.executable, "-m", "pytest", *argv[1:]], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
