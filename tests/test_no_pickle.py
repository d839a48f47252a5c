"""No code of the project unpickles anything but tensors: every ``torch.load`` passes ``weights_only=True``
explicitly (an unset flag follows $TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD), nothing passes ``weights_only`` any
other value or a ``pickle_module``, and nothing calls ``pickle.load(s)`` or builds an ``Unpickler``. The MPS
converter's restricted loading is torch's own weights_only unpickler, so no file is exempt. The scan reads
the syntax tree, so prose that names these calls is not flagged; a hit is reported as file:line. Seconds."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNPICKLING_CALLS = {"pickle.load", "pickle.loads", "_pickle.load", "_pickle.loads", "pd.read_pickle",
                    "pandas.read_pickle"}
PICKLE_MODULES = {"pickle", "_pickle", "dill", "cloudpickle"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a name or attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_const(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _call_findings(node: ast.Call) -> list[str]:
    name, keywords = _dotted(node.func), {k.arg: k.value for k in node.keywords}
    found = [f"{name}(...)"] if name in UNPICKLING_CALLS else []
    if "weights_only" in keywords and not _is_const(keywords["weights_only"], True):
        found.append(f"weights_only={ast.unparse(keywords['weights_only'])}")
    if name == "torch.load" and "weights_only" not in keywords:
        found.append("torch.load without weights_only=True")
    if "pickle_module" in keywords:
        found.append("pickle_module=")
    if "allow_pickle" in keywords and not _is_const(keywords["allow_pickle"], False):
        found.append(f"allow_pickle={ast.unparse(keywords['allow_pickle'])}")
    return found


def unpickling(source: str) -> list[tuple[int, str]]:
    """(line, what) for each way ``source`` may unpickle more than tensors."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            found += [(node.lineno, what) for what in _call_findings(node)]
        elif isinstance(node, (ast.Name, ast.Attribute)) and (getattr(node, "id", None) == "Unpickler"
                                                              or getattr(node, "attr", None) == "Unpickler"):
            found.append((node.lineno, "Unpickler"))
        elif isinstance(node, ast.ImportFrom) and node.module in PICKLE_MODULES:
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names
                      if a.name in ("load", "loads", "Unpickler")]
    return sorted(found)


def tracked_python_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files to scan")
    this = Path(__file__).resolve()
    return [ROOT / name for name in listed.stdout.splitlines() if (ROOT / name).resolve() != this]


def test_no_tracked_file_unpickles_more_than_tensors():
    files = tracked_python_files()
    assert len(files) > 50                      # the whole project, not an empty listing
    hits = [f"{path.relative_to(ROOT)}:{line}: {what}"
            for path in files if path.is_file()
            for line, what in unpickling(path.read_text(encoding="utf-8"))]
    assert not hits, "unpickling beyond tensors:\n" + "\n".join(hits)


@pytest.mark.parametrize("source, what", [
    ("torch.load(p, map_location='cpu', weights_only=False)", "weights_only=False"),
    ("torch.load(p, weights_only=flag)", "weights_only=flag"),
    ("torch.load(p)", "torch.load without weights_only=True"),
    ("x = pickle.load(f)", "pickle.load(...)"),
    ("x = pickle.loads(data)", "pickle.loads(...)"),
    ("class U(pickle.Unpickler):\n    pass", "Unpickler"),
    ("u = Unpickler(f)", "Unpickler"),
    ("from pickle import loads", "from pickle import loads"),
    ("torch.load(p, weights_only=True, pickle_module=mine)", "pickle_module="),
    ("np.load(p, allow_pickle=True)", "allow_pickle=True"),
    ("df = pd.read_pickle(p)", "pd.read_pickle(...)"),
])
def test_the_scan_names_each_way_to_unpickle(source, what):
    assert unpickling("import torch\n" + source) == [(2, what)]


def test_the_scan_passes_tensor_only_loading_and_prose():
    source = '''"""Never torch.load(p, weights_only=False) or pickle.load(f); see pickle.Unpickler docs."""
state = torch.load(p, map_location="cpu", weights_only=True)
data = pickle.dumps(obj)
try:
    np.load(p, allow_pickle=False)
except pickle.UnpicklingError:
    pass
# torch.load(p, weights_only=False)
'''
    assert unpickling(source) == []
