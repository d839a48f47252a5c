"""``tlcm-trainer`` without the app's packages: one line naming the install command and exit code 2, no
traceback. Gradio is blocked by an import hook in a fresh interpreter, so this runs whether or not it is
installed here; seconds."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK_GRADIO = """
import sys
from importlib.abc import MetaPathFinder

class NoGradio(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "gradio" or name.startswith("gradio."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoGradio())
sys.argv[0] = "tlcm-trainer"
from MODULE import main
sys.exit(main([]))
"""


def run_without_gradio(module: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_GRADIO.replace("MODULE", module)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PATH": "", "PYTHONPATH": str(ROOT), "HOME": str(home)})


def test_the_app_without_gradio_says_how_to_install_it(tmp_path):
    for module in ("tlcm_train.app.launch", "tlcm_toy.trainer_app"):
        done = run_without_gradio(module, tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert done.stderr.strip().splitlines() == [
            'tlcm-trainer: the app needs gradio, which is not installed: pip install "tlcm-suite[app]"'], module


def test_help_needs_no_gradio():
    done = subprocess.run([sys.executable, "-c", BLOCK_GRADIO.replace("MODULE", "tlcm_train.app.launch").replace(
        "main([])", "main(['--help'])")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--password" in done.stdout, done.stderr
