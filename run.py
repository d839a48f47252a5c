"""Quickstart: ``python run.py demo`` runs the main job, ``python run.py test`` the whole test suite.

Each installs what it needs into the current Python first: torch only if none is importable (a host's
CUDA torch is never replaced), then the missing packages of requirements.txt (via install.py, the same
step the WebUI runs), then the test-only tools. Nothing else is downloaded: models are built offline.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH_FALLBACK = "torch==2.13.0"
# Test-only packages used for their data files / single modules; their own dependency trees (timm,
# torchvision, wandb, ...) are not needed and would drag in a second torch build.
NO_DEPS_TEST_PACKAGES = ("open-clip-torch==3.3.0", "k-diffusion==0.1.1.post1")
TEST_PACKAGES = ("pytest>=8",)


def pip_install(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args])


def ensure_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        print(f"[run.py] no torch found: installing {TORCH_FALLBACK} (install your own CUDA build first to "
              "use a GPU)", flush=True)
        pip_install(TORCH_FALLBACK)


def ensure_requirements() -> None:
    subprocess.check_call([sys.executable, str(ROOT / "install.py")], cwd=ROOT)


def ensure_test_tools() -> None:
    missing = [p for p in TEST_PACKAGES if importlib.util.find_spec(p.split(">")[0]) is None]
    if missing:
        pip_install(*missing)
    dists = {"open-clip-torch": "open_clip", "k-diffusion": "k_diffusion"}
    missing = [p for p in NO_DEPS_TEST_PACKAGES if importlib.util.find_spec(dists[p.split("==")[0]]) is None]
    if missing:
        pip_install("--no-deps", *missing)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_torch()
    ensure_requirements()
    if argv[0] == "demo":
        ensure_test_tools()     # the demo builds the tiny kit, whose tokenizer comes from open-clip-torch
        return subprocess.call([sys.executable, "-m", "tlcm", "demo", *argv[1:]], cwd=ROOT)
    ensure_test_tools()
    return subprocess.call([sys.executable, "-m", "pytest", *argv[1:]], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
