"""The import layering: core <- hosts; core <- trainer <- app; toy, bench and tests outside production.

Read from the syntax tree of every tracked production file, imports inside functions included, relative
imports resolved. Each rule names what a layer must not import; a violation is reported as file:line.
"""
import ast
import subprocess

from webui_stub.harness import REPO

RULES = {   # path prefix -> top-level names (or dotted prefixes) its code must not import
    "tlcm/": ("tlcm_train", "comfyui_tlcm", "webui_tlcm", "comfy", "comfy_api", "folder_paths", "modules", "bench",
              "tests", "gradio"),
    "comfyui_tlcm/": ("tlcm_train", "webui_tlcm", "bench", "tests", "tlcm.testing"),
    "webui_tlcm/": ("tlcm_train", "comfyui_tlcm", "bench", "tests", "tlcm.testing"),
    "scripts/": ("tlcm_train", "comfyui_tlcm", "bench", "tests"),
    "tlcm_train/": ("comfyui_tlcm", "webui_tlcm", "comfy", "modules", "bench", "tests"),
}
TOY_FREE = ("tlcm/", "tlcm_train/", "comfyui_tlcm/", "webui_tlcm/", "scripts/")   # production imports no toy code
TOY = ("tlcm_toy",)


def _module_of(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def imports(path: str) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of every import in ``path``."""
    package = _module_of(path) if path.endswith("__init__.py") else _module_of(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse((REPO / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [(f"{module}.{alias.name}" if node.module is None else module, node.lineno) for alias in node.names]
    return found


def production_files() -> list[str]:
    files = subprocess.run(["git", "ls-files", "tlcm", "comfyui_tlcm", "webui_tlcm", "scripts", "tlcm_train"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    return [f for f in files if f.endswith(".py")]


def hits(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def test_layers_import_only_downwards():
    bad = [f"{path}:{line}: {name}" for path in production_files() for prefix, banned in RULES.items()
           if path.startswith(prefix) for name, line in imports(path) if hits(name, banned)]
    assert bad == []


def test_production_imports_no_toy_code():
    bad = [f"{path}:{line}: {name}" for path in production_files() if path.startswith(TOY_FREE)
           for name, line in imports(path) if hits(name, TOY)]
    assert bad == []


def test_the_wheel_carries_no_toy_code_or_weights():
    """The packages an install gets are the production ones: the toy world stays in the source checkout."""
    import tomllib
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert found["packages"]["find"]["include"] == ["tlcm", "tlcm.*", "tlcm_train", "tlcm_train.*"]
    assert not any("toy" in pattern for patterns in found["package-data"].values() for pattern in patterns)


def test_relative_imports_resolve_as_python_does():
    lines = (REPO / "tlcm/lora/__init__.py").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("from .match import"))
    assert ("tlcm.lora.match", line) in imports("tlcm/lora/__init__.py")      # name and line both resolved
    assert any(name == "tlcm.lora.reading" for name, _ in imports("comfyui_tlcm/lora.py"))
    assert any(name == "tlcm_toy.data" for name, _ in imports("tlcm_toy/scorer.py"))
    assert ("tlcm_train.app.presets", 19) in imports("tlcm_toy/trainer_app.py")
