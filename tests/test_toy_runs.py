"""Reuse of finished toy benchmark runs: only settings that act on the run decide."""
from __future__ import annotations

from tlcm_train.config import load_config
from tlcm_toy.runs import acting_settings

BASE = ["model.path=/m", "data.prompts=[p.txt]", "mps.scorer_weights=s.safetensors", "mlcd.steps=3", "lcd.steps=2"]


def settings(*overrides: str) -> dict:
    return acting_settings(load_config(None, [*BASE, *overrides]))


def test_unused_stage_sections_and_output_do_not_count():
    stages_1_2 = ("mps.steps=0", "dm.steps=0")
    assert settings(*stages_1_2, "dm.fake_lr=1", "mps.lr=1", "output.dir=elsewhere") == settings(*stages_1_2)
    assert settings(*stages_1_2, "lcd.teacher_steps=1") != settings(*stages_1_2)
    # stage 4 runs: its section counts, and stage 3's (the preference term's settings) too
    assert settings("mps.steps=0", "dm.steps=2", "dm.fake_lr=1") != settings("mps.steps=0", "dm.steps=2")
    assert settings("mps.steps=0", "dm.steps=2", "mps.margin=3") != settings("mps.steps=0", "dm.steps=2")


def test_prompt_files_compare_by_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = acting_settings(load_config(None, [*BASE[:1], "data.prompts=[p.txt]", *BASE[2:]]))
    absolute = acting_settings(load_config(None, [*BASE[:1], f"data.prompts=[{tmp_path / 'p.txt'}]", *BASE[2:]]))
    assert relative == absolute
