"""``install.py``: the WebUI runs it at every start; it installs only missing requirements, pinning the rest."""
import importlib.util
import subprocess
import sys
from importlib.metadata import version

import numpy
import pytest
import safetensors

from webui_stub.harness import REPO


@pytest.fixture
def install():
    spec = importlib.util.spec_from_file_location("tlcm_extension_install", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plans_only_missing_packages_and_never_torch(install, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# deps\ntorch>=99\ntorchvision\nnumpy>=999\ntqdm\n"
                   "TLCM_Surely.Absent-pkg>=1 ; python_version >= '3'\nanother-absent-pkg ; python_version < '3'\n")
    installed = {"numpy": "1.26.2", "tqdm": "4.66.1"}
    missing, warnings = install.plan(install.read_requirements(req), installed)
    assert missing == ['TLCM_Surely.Absent-pkg>=1; python_version >= "3"']
    assert len(warnings) == 1 and warnings[0].startswith("numpy 1.26.2 ") and "not upgrading" in warnings[0]


def test_installed_versions_and_constraints_pin_every_distribution(install):
    installed = install.installed_versions()
    assert installed["torch"] == version("torch") and installed["safetensors"] == safetensors.__version__
    lines = install.constraints_text({**installed, "legacy-dist": "not a version"}).splitlines()
    assert f"torch=={version('torch')}" in lines and len(lines) == len(installed)


def test_quiet_and_no_pip_when_everything_is_installed(install, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("pip must not run"))
    missing, warnings = install.plan(install.read_requirements(install.REQUIREMENTS), install.installed_versions())
    assert missing == [] and warnings == []
    assert install.main() == 0
    assert capsys.readouterr().out == ""


def test_pip_gets_the_missing_ones_under_constraints_of_everything_installed(install, monkeypatch, tmp_path, capsys):
    req = tmp_path / "requirements.txt"
    req.write_text("tqdm\ntlcm-surely-absent-pkg\n")
    calls = []

    def fake_pip(cmd):
        constraints = cmd[cmd.index("-c") + 1]
        calls.append((cmd[:4], cmd[cmd.index("-c") + 2:], open(constraints).read().splitlines()))
        return 1

    monkeypatch.setattr(subprocess, "call", fake_pip)
    assert install.main(req) == 1
    (head, args, constraints), = calls
    assert head == [sys.executable, "-m", "pip", "install"] and args == ["tlcm-surely-absent-pkg"]
    assert f"torch=={version('torch')}" in constraints and f"numpy=={numpy.__version__}" in constraints
    out = capsys.readouterr()
    assert "installing missing dependencies: tlcm-surely-absent-pkg" in out.out
    assert "nothing was changed" in out.err


def test_host_requirements_are_the_base_install():
    """requirements.txt (what hosts install) = pyproject's base dependencies less torch, plus [chinese]."""
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = {r for r in project["dependencies"] if not r.startswith("torch")}
    expected |= set(project["optional-dependencies"]["chinese"])
    lines = {line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()}
    assert {line for line in lines if line and not line.startswith("#")} == expected
    assert not {"diffusers", "peft", "accelerate"} & {r.split(">")[0].split("=")[0] for r in expected}


def test_missing_requirements_file_is_an_error(install, tmp_path):
    with pytest.raises(FileNotFoundError, match="requirements.txt is missing"):
        install.read_requirements(tmp_path / "requirements.txt")
