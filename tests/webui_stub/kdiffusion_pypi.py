"""Load PyPI ``k-diffusion`` 0.1.1.post1's ``sampling.py`` / ``external.py`` (byte-identical to A1111's pinned
k-diffusion ab527a9) as the package ``k_diffusion``, without its ``__init__`` (which imports torchvision,
clip and clean-fid, absent here). Imports those files need only for features TLCM never uses
(``scipy``/``torchdiffeq`` for LMS and DPM adaptive, ``torchsde`` for Brownian noise, ``torchvision`` in
``utils``) get placeholders that raise when called, and only while the files load.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

OPTIONAL_IMPORTS = ("scipy", "torchdiffeq", "torchsde", "torchvision", "torchvision.transforms",
                    "torchvision.transforms.functional")


def _placeholder(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def missing(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{name}.{attr} is not installed in the test environment")
        return unavailable
    module.__getattr__ = missing
    return module


@contextmanager
def _optional_imports() -> Iterator[None]:
    roots = {name.split(".")[0] for name in OPTIONAL_IMPORTS}
    absent = {root for root in roots if root not in sys.modules and importlib.util.find_spec(root) is None}
    added = [name for name in OPTIONAL_IMPORTS if name.split(".")[0] in absent]
    for name in added:
        sys.modules[name] = _placeholder(name)
    if "torchvision.transforms" in added:
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def load_k_diffusion() -> types.ModuleType:
    """The ``k_diffusion`` package with ``utils``, ``sampling`` and ``external`` loaded (cached in sys.modules)."""
    if "k_diffusion" in sys.modules and hasattr(sys.modules["k_diffusion"], "external"):
        return sys.modules["k_diffusion"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    folder = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(folder)]
    sys.modules["k_diffusion"] = package
    with _optional_imports():
        for name in ("utils", "sampling", "external"):
            file_spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", folder / f"{name}.py")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[file_spec.name] = module
            file_spec.loader.exec_module(module)
            setattr(package, name, module)
    return package
