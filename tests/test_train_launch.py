"""Two CPU processes under ``accelerate launch`` (gloo): the student LoRA stays identical on both ranks."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from tlcm.testing.build import build_tiny_sdxl
from tlcm_train.checkpoint import verify_checkpoint
from tlcm_train.state_files import load_state

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU/gloo launch test; on a CUDA machine ranks would use NCCL")
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this torch build")
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_two_process_launch_keeps_ranks_identical(tmp_path):
    kit = build_tiny_sdxl(tmp_path / "kit")
    (tmp_path / "p.txt").write_text("a red cat\na blue dog\na green car\na yellow house\n")
    out = tmp_path / "out"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "tlcm_train", "--output-dir", str(out),
           "--set", f"model.path={kit.diffusers}", "--set", f"data.prompts=[{tmp_path / 'p.txt'}]",
           "--set", "lora.rank=4", "--set", "lora.target_modules=[to_q, to_v]", "--set", "distill.num_segments=2",
           "--set", "mlcd.steps=2", "--set", "lcd.steps=1", "--set", "mps.steps=0", "--set", "dm.steps=0", "--set", "mlcd.lr=1e-2", "--set", "lcd.lr=1e-2",
           "--set", "train.resolution=64", "--set", "output.sample_every=0", "--set", "output.formats=[kohya]"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    digests = status["rank_lora_digests"]
    assert status["state"] == "finished" and len(digests) == 2 and digests[0] == digests[1]
    # identical weights although each rank drew its own noise (and prompts): the gradients were averaged
    ckpt = out / "checkpoints" / "checkpoint-00000003"
    assert {"rank0.json", "rank1.json", "rank1.safetensors"} <= set(verify_checkpoint(ckpt))
    ranks = [load_state(ckpt, f"rank{r}") for r in range(2)]
    assert not torch.equal(ranks[0]["generator"], ranks[1]["generator"])
    assert (out / "lora" / "tlcm_lora_kohya.safetensors").is_file() and not (out / ".tlcm-train.lock").exists()
