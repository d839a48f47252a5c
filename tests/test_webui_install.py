"""``install.py``: the WebUI runs it at every start; it installs only missing non-torch requirements."""
import importlib.util
import subprocess
import sys

import pytest

from webui_stub.harness import REPO


@pytest.fixture
def install():
    spec = importlib.util.spec_from_file_location("tlcm_extension_install", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plans_only_missing_packages_and_never_torch(install, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# deps\ntorch>=99\ntorchvision\nnumpy>=999\ntqdm\ntlcm-surely-absent-pkg>=1 ; python_version >= '3'\n"
                   "another-absent-pkg ; python_version < '3'\n")
    missing, warnings = install.plan(install.read_requirements(req))
    assert missing == ['tlcm-surely-absent-pkg>=1; python_version >= "3"']
    assert len(warnings) == 1 and warnings[0].startswith("numpy ") and "not upgrading" in warnings[0]


def test_quiet_and_no_pip_when_everything_is_installed(install, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("pip must not run"))
    missing, warnings = install.plan(install.read_requirements(install.REQUIREMENTS))
    assert missing == [] and warnings == []
    assert install.main() == 0
    assert capsys.readouterr().out == ""


def test_pip_gets_exactly_the_missing_ones(install, monkeypatch, tmp_path, capsys):
    req = tmp_path / "requirements.txt"
    req.write_text("tqdm\ntlcm-surely-absent-pkg\n")
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert install.main(req) == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "tlcm-surely-absent-pkg"]]
    assert "installing missing dependencies: tlcm-surely-absent-pkg" in capsys.readouterr().out


def test_missing_requirements_file_is_an_error(install, tmp_path):
    with pytest.raises(FileNotFoundError, match="requirements.txt is missing"):
        install.read_requirements(tmp_path / "requirements.txt")
