"""Quickstart: ``python run.py demo`` runs the main job, ``python run.py test`` the whole test suite.

Each installs what it needs into the current Python first, changing nothing that is installed: torch
only if none is importable (a CPU build; a host's CUDA torch is never replaced), then the missing
requirements of the pyproject extras the job needs (``[train]`` for the demo, ``[test]`` for the tests)
through ``install.py``, under a constraints file of everything installed, and open-clip-torch's vocabulary
file. Nothing else is downloaded: models are built offline.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import install

ROOT = Path(__file__).resolve().parent
TORCH_FALLBACK = "torch==2.13.0"
# Read for one data file (the CLIP BPE vocabulary behind the tiny kit and offline single-file loading);
# installed without its dependency tree (timm, torchvision), which would drag in a second torch build.
DATA_PACKAGES = {"open_clip": "open-clip-torch==3.3.0"}
# Test-only. k-diffusion: its two sampler files are imported by path (its __init__ needs torchvision, clip...).
TEST_NO_DEPS_PACKAGES = {"k_diffusion": "k-diffusion==0.1.1.post1"}
JOB_EXTRAS = {"demo": ("train",), "test": ("test", "chinese")}


def read_pyproject() -> dict:
    try:
        import tomllib
    except ImportError:                       # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def extra_requirements(project: dict, extras: tuple[str, ...]) -> list[install.Requirement]:
    """The base dependencies and those of ``extras``, with self-references (``tlcm-suite[x]``) expanded."""
    name = install.canonicalize_name(project["name"])
    found: list[install.Requirement] = []
    pending, seen = list(extras), set()
    for text in project.get("dependencies", []):
        found.append(install.Requirement(text))
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            req = install.Requirement(text)
            if install.canonicalize_name(req.name) == name:
                pending.extend(req.extras)
            else:
                found.append(req)
    return found


def ensure_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        print(f"[run.py] no torch found: installing {TORCH_FALLBACK} (install your own CUDA build first to "
              "use a GPU)", flush=True)
        install.install_missing([TORCH_FALLBACK], "-q")


def ensure(requirements: list[install.Requirement], *pip_args: str) -> None:
    missing, warnings = install.plan(requirements, install.installed_versions())
    for text in warnings:
        print(f"[run.py] {text}", flush=True)
    if missing and install.install_missing(missing, "-q", *pip_args):
        raise SystemExit(1)


def ensure_modules(packages: dict[str, str], *pip_args: str) -> None:
    """Install the requirements whose module is not importable (``packages``: module -> requirement)."""
    need = [req for module, req in packages.items() if importlib.util.find_spec(module) is None]
    if need and install.install_missing(need, "-q", *pip_args):
        raise SystemExit(1)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in JOB_EXTRAS:
        print(__doc__)
        return 2
    ensure_torch()
    ensure(extra_requirements(read_pyproject()["project"], JOB_EXTRAS[argv[0]]))
    ensure_modules(DATA_PACKAGES, "--no-deps")
    if argv[0] == "demo":
        return subprocess.call([sys.executable, "-m", "tlcm_toy.demo", *argv[1:]], cwd=ROOT)
    ensure_modules(TEST_NO_DEPS_PACKAGES, "--no-deps")
    return subprocess.call([sys.executable, "-m", "pytest", *argv[1:]], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
