"""Host code paths import no diffusers, peft or accelerate (hosts do not ship them; installing them broke A1111).

Each host is loaded in a fresh process by ``tests/host_import_probe.py``: the host's modules first, then an
import hook refuses the three names while the ComfyUI pack, the WebUI extension or the core's sampler,
schedules and LoRA code load and convert an official-layout LoRA.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from comfy_harness import unavailable_reason
from webui_stub.harness import REPO

PROBE = REPO / "tests" / "host_import_probe.py"
MODULES = ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.0.resnets.2.conv_shortcut")


@pytest.fixture
def lora_dir(tmp_path):
    """models/Lora with the official layout: adapter_model.safetensors + lora_model_adapter_config.json."""
    folder = tmp_path / "Lora" / "TLCMSDXL"
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    save_file({f"base_model.model.{name}.lora_{ab}.weight": torch.randn(shape, generator=generator)
               for name in MODULES for ab, shape in (("A", (4, 6)), ("B", (6, 4)))},
              str(folder / "adapter_model.safetensors"))
    (folder / "lora_model_adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 3, "target_modules": ["to_q", "conv_shortcut"]}))
    return tmp_path / "Lora"


def probe(host: str, lora_dir) -> dict:
    proc = subprocess.run([sys.executable, str(PROBE), host, str(lora_dir)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["attempts"] == [] and result["loaded"] == [], result
    return result


def test_core_host_paths(lora_dir):
    result = probe("core", lora_dir)
    assert result["used"] == ["[999, 749, 499, 124]"]
    assert (lora_dir / "probe-peft" / "adapter_config.json").is_file()


def test_webui_extension(lora_dir):
    result = probe("webui", lora_dir)
    assert result["used"][0] == "TLCMScript"
    assert "2/2 LoRA modules matched" in result["used"][1]
    assert (lora_dir / "TLCMSDXL" / "TLCMSDXL-kohya.safetensors").is_file()


def test_comfyui_pack(lora_dir):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    result = probe("comfyui", lora_dir)
    assert {"TLCMSampler", "TLCMScheduler", "TLCMLoraLoader"} <= set(result["used"])
