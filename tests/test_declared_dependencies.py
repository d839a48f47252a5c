"""Every third-party package production code imports is declared in pyproject (base or an extra).

Host-provided modules are allowed only in that host's adapter (ComfyUI's ``comfy``/``comfy_api``/``folder_paths``
in comfyui_tlcm, the WebUI's ``modules``/``gradio`` in webui_tlcm and scripts); install.py and run.py use pip's
own packaging. Imports are read from the syntax tree, including imports inside functions.
"""
import ast
import subprocess
import sys
import tomllib

from webui_stub.harness import REPO

PRODUCTION = ("tlcm", "tlcm_train", "comfyui_tlcm", "webui_tlcm", "scripts", "__init__.py", "install.py", "run.py")
OWN = {"tlcm", "tlcm_train", "tlcm_toy", "comfyui_tlcm", "webui_tlcm", "install"}
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml"}
HOST_PROVIDED = {"comfyui_tlcm/": {"comfy", "comfy_api", "folder_paths"}, "webui_tlcm/": {"modules", "gradio"},
                 "scripts/": {"modules"}, "install.py": {"pip", "packaging"}, "run.py": {"pip"}}


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    names = set()
    for text in texts:
        name = text.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower())
    return names


def third_party_imports() -> dict[str, list[str]]:
    files = subprocess.run(["git", "ls-files", *PRODUCTION], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    found: dict[str, list[str]] = {}
    for path in (f for f in files if f.endswith(".py") and not f.startswith("tlcm_toy/")):
        for node in ast.walk(ast.parse((REPO / path).read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                root = name.split(".")[0]
                host = next((mods for prefix, mods in HOST_PROVIDED.items() if path.startswith(prefix)), set())
                if root not in sys.stdlib_module_names and root not in OWN and root not in host:
                    found.setdefault(DISTRIBUTION.get(root, root).lower(), []).append(f"{path}:{node.lineno}")
    return found


def test_every_imported_package_is_declared():
    undeclared = {name: places[:3] for name, places in third_party_imports().items() if name not in declared()}
    assert undeclared == {}


def test_the_scan_sees_imports_inside_functions():
    imports = third_party_imports()
    assert any(place.startswith("tlcm/scheduler.py") for place in imports["diffusers"])
    assert any(place.startswith("tlcm_train/app/jobs.py") for place in imports["psutil"])
