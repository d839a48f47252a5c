"""The import layering: core <- hosts; core <- trainer <- app; toy, bench and tests outside production.

Read from the syntax tree of every tracked production file, imports inside functions included, relative
imports resolved. Each rule names what a layer must not import; a violation is reported as file:line.
"""
import ast
import subprocess

from webui_stub.harness import REPO

RULES = {   # path prefix -> top-level names (or dotted prefixes) its code must not import
    "tlcm/": ("train", "comfyui_tlcm", "webui_tlcm", "comfy", "comfy_api", "folder_paths", "modules", "bench",
              "tests", "gradio"),
    "comfyui_tlcm/": ("train", "webui_tlcm", "bench", "tests", "tlcm.testing"),
    "webui_tlcm/": ("train", "comfyui_tlcm", "bench", "tests", "tlcm.testing"),
    "scripts/": ("train", "comfyui_tlcm", "bench", "tests"),
    "train/": ("comfyui_tlcm", "webui_tlcm", "comfy", "modules", "bench", "tests"),
}
TOY_FREE = "train/"          # the production trainer imports no toy code ...
TOY = ("train.toy", "train.preference.toy_scorer")
# ... except these places, which the planned split of toy from production removes (the toy scorer behind the
# scorer interface, the app's toy preset as a plugin). New ones fail the test.
TOY_ALLOWED = {"train/preference/scorer.py", "train/preference/toy_scorer.py", "train/app/presets.py",
               "train/app/paths.py"}


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
    files = subprocess.run(["git", "ls-files", "tlcm", "comfyui_tlcm", "webui_tlcm", "scripts", "train"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    return [f for f in files if f.endswith(".py") and not f.startswith("train/toy/")]


def hits(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def test_layers_import_only_downwards():
    bad = [f"{path}:{line}: {name}" for path in production_files() for prefix, banned in RULES.items()
           if path.startswith(prefix) for name, line in imports(path) if hits(name, banned)]
    assert bad == []


def test_production_trainer_imports_no_toy_code_beyond_the_known_places():
    bad = [f"{path}:{line}: {name}" for path in production_files() if path.startswith(TOY_FREE)
           and path not in TOY_ALLOWED for name, line in imports(path) if hits(name, TOY)]
    assert bad == []


def test_relative_imports_resolve_as_python_does():
    assert ("tlcm.lora.match", 7) in imports("tlcm/lora/__init__.py")
    assert any(name == "tlcm.lora.reading" for name, _ in imports("comfyui_tlcm/lora.py"))
    assert any(name == "train.toy.data" for name, _ in imports("train/preference/toy_scorer.py"))
