"""The quickstart job end to end at a few steps: distils the toy teacher, loads the LoRA through the core,
writes the comparison grid and the metrics table."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tlcm_toy.demo import GRID_ROWS, GRID_STEPS, SCALE, main


@pytest.mark.usefixtures("one_thread")
def test_demo_distils_and_writes_lora_grid_and_metrics(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--n", "8", "--set", "mlcd.steps=2", "--set", "lcd.steps=1",
                 "--set", "train.batch_size=4", "--set", "output.checkpoint_every=0",
                 "--set", "output.sample_every=0"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["steps"] == 3 and len(record["final_losses"]) == 3
    labels = ["teacher DDIM-25 + CFG", "teacher DDIM-2 + CFG", "teacher DDIM-4 + CFG",
              *(f"TLCM-{n}" for n in GRID_STEPS)]
    assert list(record["rows"]) == labels
    for label, row in record["rows"].items():
        assert 0 <= row["acc_all"] <= 1 and np.isfinite(row["fd"]), label
        assert row["unet_evals"] == (50 if "25" in label else 2 * row["steps"] if "teacher" in label else row["steps"])
    assert record["rows"]["teacher DDIM-25 + CFG"]["fd_teacher25"] == pytest.approx(0, abs=1e-3)
    assert record["rows"]["TLCM-4"]["fd"] != record["rows"]["TLCM-2"]["fd"]
    # At 2 UNet evaluations the LoRA beats the teacher's 2-step DDIM + CFG (4 evaluations) on FD to real images.
    # The committed benchmark (bench/results/toy_table1.md: 300 MLCD + 100 LCD steps, N = 250, 3 noise seeds) has
    # 80.5 ± 1.5 vs 241 ± 15, a ratio of 0.33. This 3-step run at N = 8 cannot show that margin: it measured
    # 621 vs 887 (0.70) at the test's noise seed 0 and 0.73-0.87 at seeds 1-3, so it asserts a 10 % gap, which
    # every one of those runs clears. (A 2-step DDIM with CFG w = 3 is the teacher's weakest 2-step row, so an
    # almost untrained LoRA already clears it; what fails is a broken TLCM sampler or a swapped FD column.)
    assert record["rows"]["TLCM-2"]["fd"] < 0.9 * record["rows"]["teacher DDIM-2 + CFG"]["fd"]
    table = (tmp_path / "metrics.md").read_text()
    assert all(f"| {label} |" in table for label in labels)
    grid = Image.open(tmp_path / "comparison.png")
    assert grid.size == (32 * SCALE * len(labels), 14 + 32 * SCALE * GRID_ROWS)
    lora = tmp_path / "run" / "lora"
    for name in ("tlcm_lora_kohya.safetensors", "tlcm_lora_diffusers.safetensors",
                 "tlcm_lora_peft/adapter_model.safetensors"):
        assert (lora / name).is_file(), name
    assert str(lora) in printed and str(tmp_path / "comparison.png") in printed and str(tmp_path / "metrics.md") in printed
