"""Installing the extension never changes a host's packages, and its host code runs under the host's pins.

Real venvs pinned like AUTOMATIC1111 v1.10.1 and ComfyUI 0.30 (``tests/host_venvs.py``, cached) get the
extension installed the way each host does it; pip's view of every installed distribution must not move.
The A1111 venv has no diffusers or peft and an old accelerate, so converting the official LoRA there and
sampling through k-diffusion there show that the host code paths need none of them.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_harness import RUNTIME_REQUIREMENTS
from host_venvs import A1111_PINS, K_DIFFUSION, REPO, HostVenvUnavailable, host_venv, installed
from tlcm.lora import TLCM_TARGET_SUFFIXES, sdxl_unet_module_names

CHECKS = REPO / "tests" / "host_venv_checks.py"
COMFYUI_PINS = (f"torch=={torch.__version__.split('+')[0]}", *RUNTIME_REQUIREMENTS.values())
LORA_RANK, LORA_ALPHA = 4, 3.0        # alpha != rank: a loader that drops the config gets scale 1, not 0.75


def _venv(name: str, pins: tuple[str, ...], *no_deps: str):
    try:
        return host_venv(name, pins, *no_deps)
    except HostVenvUnavailable as err:       # a failure in CI: .ci/run requires every layer
        pytest.skip(f"{name} venv unavailable: {err}")


@pytest.fixture(scope="module")
def a1111():
    return _venv("a1111", A1111_PINS, K_DIFFUSION)


@pytest.fixture(scope="module")
def comfyui():
    return _venv("comfyui", COMFYUI_PINS)


def run(python, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(python), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)


def dry_run_installs(python, tmp_path, *requirements: str, constrained: bool) -> dict[str, str]:
    """What pip would install (name -> version) for ``requirements``, with or without install.py's constraints."""
    report = tmp_path / f"report-{constrained}.json"
    if constrained:
        code = f"import install, sys; sys.exit(install.install_missing({list(requirements)!r}, '-q', '--dry-run', " \
               f"'--report', {str(report)!r}))"
        proc = run(python, "-c", code)
    else:
        proc = run(python, "-m", "pip", "install", "-q", "--dry-run", "--report", report, *requirements)
    if proc.returncode != 0:
        assert constrained, proc.stderr
        assert "nothing was changed" in proc.stderr
        return {}
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def changed(before: dict[str, str], planned: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {name: (before[name], version) for name, version in planned.items()
            if name in before and before[name] != version}


def test_a1111_webui_install_changes_nothing(a1111):
    before = installed(a1111)
    assert before["transformers"] == "4.30.2" and before["pydantic"].startswith("1.") and "diffusers" not in before
    proc = run(a1111, REPO / "install.py")        # what the WebUI runs at every start
    assert proc.returncode == 0, proc.stderr
    assert installed(a1111) == before


def test_a1111_constrained_pip_never_moves_a_pin(a1111, tmp_path):
    """The install that broke A1111 (diffusers + peft): unconstrained pip upgrades its pins, ours cannot."""
    before = installed(a1111)
    wanted = ("diffusers>=0.30", "peft>=0.12")
    assert changed(before, dry_run_installs(a1111, tmp_path, *wanted, constrained=False)), \
        "unconstrained pip no longer upgrades anything here: the scenario this test guards is gone"
    assert changed(before, dry_run_installs(a1111, tmp_path, *wanted, constrained=True)) == {}


def _official_layout_lora(folder):
    """An official-layout PEFT adapter over every TLCM target of SDXL (tiny tensors, seeded)."""
    generator = torch.Generator().manual_seed(0)
    targets = [n for n in sdxl_unet_module_names() if any(n == s or n.endswith("." + s) for s in TLCM_TARGET_SUFFIXES)]
    state = {}
    for name in targets:
        state[f"base_model.model.{name}.lora_A.weight"] = torch.randn((LORA_RANK, 8), generator=generator)
        state[f"base_model.model.{name}.lora_B.weight"] = torch.randn((8, LORA_RANK), generator=generator)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "adapter_model.safetensors"))
    (folder / "lora_model_adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": LORA_RANK, "lora_alpha": LORA_ALPHA, "target_modules": list(TLCM_TARGET_SUFFIXES)}))
    return state


def test_a1111_converts_the_official_lora_without_diffusers(a1111, tmp_path):
    state = _official_layout_lora(tmp_path / "Lora" / "TLCMSDXL")
    proc = run(a1111, CHECKS, "convert_lora", tmp_path / "Lora")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["forbidden"] == [] and len(result["reports"]) == 1
    kohya = load_file(str(tmp_path / "Lora" / "TLCMSDXL" / "TLCMSDXL-kohya.safetensors"))
    assert len(kohya) == 3 * len(state) // 2
    for key, tensor in state.items():
        name, ab = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        flat = "lora_unet_" + name.replace(".", "_")
        assert torch.equal(kohya[f"{flat}.lora_{'down' if ab == 'A.weight' else 'up'}.weight"], tensor)
        assert kohya[f"{flat}.alpha"].item() == LORA_ALPHA


def test_a1111_tlcm_sampler_through_k_diffusion(a1111):
    proc = run(a1111, CHECKS, "sampler_parity")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["torch"].startswith("2.1.2") and result["forbidden"] == []
    assert set(result["relative_errors"]) == {"1", "2", "4", "8"}
    assert max(result["relative_errors"].values()) < 1e-5, result


def test_comfyui_pack_install_changes_nothing(comfyui, tmp_path):
    before = installed(comfyui)
    assert "diffusers" not in before and "peft" not in before and "accelerate" not in before
    proc = run(comfyui, REPO / "install.py")
    assert proc.returncode == 0, proc.stderr
    assert installed(comfyui) == before
    # ComfyUI-Manager and `comfy node install` run plain pip on requirements.txt: it must find nothing to do.
    report = tmp_path / "manager.json"
    proc = run(comfyui, "-m", "pip", "install", "-q", "--dry-run", "--report", report, "-r", REPO / "requirements.txt")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["install"] == []


def test_a1111_diffusers_commands_name_the_extra_to_install(a1111, tmp_path):
    """Without diffusers (a host install) `tlcm generate` is one line saying what to install, exit 2."""
    from tlcm.testing.build import build_tiny_sdxl
    kit = build_tiny_sdxl(tmp_path / "kit")
    proc = run(a1111, "-m", "tlcm", "generate", "--model", kit.diffusers, "--prompt", "a", "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'tlcm: tlcm generate needs diffusers, which is not installed: pip install "tlcm-suite[diffusers]" '
        "(host installs leave it out on purpose)"]
