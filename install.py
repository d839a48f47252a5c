"""Install the extension's missing dependencies (the WebUI runs this at every start unless --skip-install).

Reads ``requirements.txt`` next to this file and pip-installs only distributions that are not installed
at all; torch (and torchvision/torchaudio/xformers) is never touched, because the WebUI pins its own
build. An installed distribution older than the requirement is reported, not upgraded: the WebUI pins
several of them (e.g. transformers) and an upgrade could break it. Silent when nothing is missing.
Also usable outside a WebUI: ``python install.py``.
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:                   # a bare venv: pip's vendored copy
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

REQUIREMENTS = Path(__file__).resolve().with_name("requirements.txt")
NEVER_INSTALL = {"torch", "torchvision", "torchaudio", "xformers"}


def read_requirements(path: Path) -> list[Requirement]:
    """Requirements of ``path`` (comments, blank lines and pip options skipped); bad lines are errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the extension folder is incomplete")
    reqs = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            reqs.append(Requirement(line))
        except InvalidRequirement as err:
            raise ValueError(f"{path}:{number}: {err}") from err
    return reqs


def plan(reqs: list[Requirement]) -> tuple[list[str], list[str]]:
    """(requirements to install, warnings about installed-but-older ones); torch-family never planned."""
    missing, warnings = [], []
    for req in reqs:
        if req.name.lower() in NEVER_INSTALL or (req.marker is not None and not req.marker.evaluate()):
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            warnings.append(f"{req.name} {installed} is installed, {req} is wanted; not upgrading it (the WebUI "
                            f"may pin it). If TLCM fails, upgrade it yourself.")
    return missing, warnings


def main(path: Path = REQUIREMENTS) -> int:
    missing, warnings = plan(read_requirements(path))
    for text in warnings:
        print(f"[TLCM] {text}")
    if not missing:
        return 0
    print(f"[TLCM] installing missing dependencies: {', '.join(missing)}")
    return subprocess.call([sys.executable, "-m", "pip", "install", *missing])


if __name__ == "__main__":
    rc = main()
    if rc:
        print(f"[TLCM] pip failed (exit code {rc}); install the packages above by hand", file=sys.stderr)
    sys.exit(rc)
