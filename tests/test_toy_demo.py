"""The quickstart job end to end at a few steps: distils the toy teacher, loads the LoRA through the core,
writes the comparison grid and the metrics table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlcm_toy.demo import GRID_ROWS, GRID_STEPS, SCALE, DemoProgress, main

REPO = Path(__file__).resolve().parents[1]


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
    # The committed benchmark (bench/results/toy_table1.md: the demo's 240 steps, 3 training seeds, N = 250) has
    # 96.1 ± 10 vs 356 ± 12, a ratio of 0.27. This 3-step run at N = 8 measured 586 vs 1348 (0.43) at the test's
    # noise seed 0 and 0.28-0.43 at seeds 1-3, so it asserts a ratio below 0.6, which every one of those runs
    # clears. (A 2-step DDIM with CFG w = 3 is the teacher's weakest 2-step row, so an almost untrained LoRA
    # already clears it; what fails is a broken TLCM sampler or a swapped FD column.)
    assert record["rows"]["TLCM-2"]["fd"] < 0.6 * record["rows"]["teacher DDIM-2 + CFG"]["fd"]
    table = (tmp_path / "metrics.md").read_text()
    assert all(f"| {label} |" in table for label in labels)
    cited = re.findall(r"bench/results/[\w.]+", table)
    assert cited and all((REPO / path).is_file() for path in cited), cited       # every reference resolves
    stages = [line.split(":")[0] for line in printed.splitlines() if line.startswith("[demo] step ")]
    assert list(dict.fromkeys(stages)) == [f"[demo] step {k}/4 of the demo" for k in (1, 2, 3, 4)]
    assert stages == sorted(stages)                                 # in order; training may add lines of its own
    assert "ETA ~" in printed and "[demo] done in " in printed
    assert set(record["stage_seconds"]) == {"setup", "training", "export", "evaluation"}
    grid = Image.open(tmp_path / "comparison.png")
    assert grid.size == (32 * SCALE * len(labels), 14 + 32 * SCALE * GRID_ROWS)
    lora = tmp_path / "run" / "lora"
    for name in ("tlcm_lora_kohya.safetensors", "tlcm_lora_diffusers.safetensors",
                 "tlcm_lora_peft/adapter_model.safetensors"):
        assert (lora / name).is_file(), name
    assert str(lora) in printed and str(tmp_path / "comparison.png") in printed and str(tmp_path / "metrics.md") in printed


def test_demo_progress_eta_follows_the_trainers_steps():
    """The whole-demo ETA: before training, the reference durations; during it, the measured time per step for
    the steps left plus the later stages scaled by the same speed; a line every tenth of training."""
    now, lines = [0.0], []
    progress = DemoProgress(total_steps=100, batch=32, n=250, clock=lambda: now[0], echo=lines.append)
    progress.enter(0)
    assert lines[-1].startswith("[demo] step 1/4 of the demo: setup") and lines[-1].endswith("ETA ~4:45")  # 10+210+5+60 s
    now[0] = 10.0
    progress.enter(1)
    for _ in range(10):
        now[0] += 4.2                                 # twice the reference's 2.1 s per step
        progress.on_phase("backward")                 # other phases do not count
        progress.on_phase("optimizer")
    assert lines[-1] == "[demo] step 2/4 of the demo: training step 10/100, elapsed 0:52, ETA ~8:28"  # 90*4.2+2*(5+60)
    for _ in range(90):
        now[0] += 4.2
        progress.on_phase("optimizer")
    assert lines[-1].startswith("[demo] step 3/4 of the demo: export") and lines[-1].endswith("ETA ~2:10")
    assert len(lines) == 12                           # setup, training start, 9 tenths, export
    progress.enter(2)                                 # the demo's own call after the run: already there
    now[0] += 10.0
    progress.enter(3, samplers=8)
    assert "8 samplers x 250 prompts" in lines[-1] and lines[-1].endswith("ETA ~2:00")
    now[0] += 100.0
    assert progress.finish() == {"setup": 10.0, "training": 420.0, "export": 10.0, "evaluation": 100.0}
    assert lines[-1] == "[demo] done in 9:00 (setup 0:10, training 7:00, export 0:10, evaluation 1:40)"
