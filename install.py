"""Install what TLCM's host code needs and is missing, without changing any installed distribution.

The WebUI (A1111 / Forge / reForge) runs this file at every start unless ``--skip-install``; ComfyUI-Manager
reads the same ``requirements.txt``. A host pins its own versions (A1111 1.10: transformers 4.30.2,
pydantic 1, torch 2.1.2), and one upgrade can stop it from starting. So pip only ever runs for
requirements that are not installed at all, and under a constraints file pinning every installed
distribution to its installed version: pip either finds versions that fit the host or fails, and a
failure leaves the host as it was. An installed distribution older than a requirement is reported, not
upgraded. torch and its companions are never planned here: the host chooses its build.

Also usable outside a WebUI: ``python install.py``; ``run.py`` installs its extras through ``install_missing``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:                   # a bare venv: pip's vendored copy
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

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


def installed_versions() -> dict[str, str]:
    """Canonical name -> version of every installed distribution (the first on sys.path wins, as for import)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def plan(reqs: list[Requirement], installed: dict[str, str]) -> tuple[list[str], list[str]]:
    """(requirements to install, warnings about installed-but-older ones); torch-family never planned."""
    missing, warnings = [], []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name in NEVER_INSTALL or (req.marker is not None and not req.marker.evaluate()):
            continue
        if name not in installed:
            missing.append(str(req))
        elif req.specifier and not req.specifier.contains(installed[name], prereleases=True):
            warnings.append(f"{req.name} {installed[name]} is installed, {req} is wanted; not upgrading it (the "
                            "host may pin it). If TLCM fails, upgrade it yourself.")
    return missing, warnings


def constraints_text(installed: dict[str, str]) -> str:
    """``name==version`` for every installed distribution pip can pin (unparseable versions are left out)."""
    lines = []
    for name, version in sorted(installed.items()):
        try:
            Version(version)
        except InvalidVersion:
            continue
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def install_missing(requirements: list[str], *pip_args: str) -> int:
    """pip-install ``requirements`` with every installed distribution held at its version; pip's exit code."""
    with tempfile.TemporaryDirectory(prefix="tlcm-install-") as folder:
        constraints = Path(folder) / "installed.txt"
        constraints.write_text(constraints_text(installed_versions()), encoding="utf-8")
        rc = subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                              "-c", str(constraints), *pip_args, *requirements])
    if rc:
        print(f"[TLCM] could not install {' '.join(requirements)} without changing an installed package "
              f"(pip exit code {rc}); nothing was changed. Install a version that fits your environment by "
              "hand, e.g. pip install <name>==<version>.", file=sys.stderr)
    return rc


def main(path: Path = REQUIREMENTS) -> int:
    missing, warnings = plan(read_requirements(path), installed_versions())
    for text in warnings:
        print(f"[TLCM] {text}")
    if not missing:
        return 0
    print(f"[TLCM] installing missing dependencies: {', '.join(missing)}")
    return install_missing(missing)


if __name__ == "__main__":
    sys.exit(main())
