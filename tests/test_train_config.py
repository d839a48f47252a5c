"""Trainer config, prompts and small pure pieces: no model needed, milliseconds each."""
from __future__ import annotations

import json

import pytest
import torch

from tlcm_train.checkpoint import REQUIRED, checkpoint_dirs, resolve_resume, write_manifest
from tlcm_train.cli import main as cli_main
from tlcm_train.config import ConfigError, load_config, save_config
from tlcm_train.stages import build_stages, stage_at, stage_lr
from tlcm_train.prompts import PromptFileError, PromptStream, read_prompts
from tlcm_train.teacher import even_path

BASE = ["model.path=/m", "data.prompts=[p.txt]", "mps.scorer_weights=/mps.safetensors"]


def test_defaults_are_the_papers():
    cfg = load_config(None, BASE)
    assert (cfg.distill.num_segments, cfg.distill.guidance_scale, cfg.mlcd.skip) == (8, 8.0, 20)
    assert (cfg.mlcd.lr, cfg.lcd.lr, cfg.lcd.student_steps, cfg.lcd.teacher_steps) == (1e-4, 1e-5, 4, 3)
    assert (cfg.lora.rank, cfg.lora.alpha) == (64, 8.0)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_file_then_overrides_and_snapshot_roundtrip(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    if suffix == ".yaml":
        path.write_text("model: {path: /m}\ndata: {prompts: [a.txt]}\nmlcd: {lr: 1e-3, steps: 5}\n")
    else:
        path.write_text('[model]\npath = "/m"\n[data]\nprompts = ["a.txt"]\n[mlcd]\nlr = 1e-3\nsteps = 5\n')
    cfg = load_config(path, ["mlcd.steps=7", "output.sample_steps=[2, 4]", "mps.steps=0", "dm.steps=0"])
    assert cfg.mlcd.lr == 1e-3 and cfg.mlcd.steps == 7 and cfg.output.sample_steps == [2, 4]
    again = load_config(save_config(cfg, tmp_path / "snap.yaml"))
    assert again == cfg and again.digest() == cfg.digest()


@pytest.mark.parametrize("override, match", [
    ("mlcd.stepz=3", "unknown key.*mlcd.stepz"),
    ("mlcd.steps=many", "mlcd.steps: expected int"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("distill.distance=lpips", "distill.distance"),
    ("mlcd.skip=200", "mlcd.skip"),
    ("nosection=1", "section.key=value"),
    ("output.formats=[kohya, ckpt]", "output.formats"),
    ("mps.decode_dtype=fp16", "mps.decode_dtype"),
    ("mps.decode_checkpoint=sample", "mps.decode_checkpoint"),
    ("mps.scorer_dtype=int8", "mps.scorer_dtype"),
    ("mps.decode_crop=-1", "mps.decode_crop"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*BASE, override])


def test_example_config_loads():
    from pathlib import Path
    cfg = load_config(Path(__file__).resolve().parents[1] / "tlcm_train" / "configs" / "sdxl.yaml")
    assert cfg.stage_steps() == [("mlcd", 12000), ("lcd", 2000), ("mps", 500), ("dm", 1000)]
    assert cfg.total_steps == 15500 and cfg.train.mixed_precision == "bf16"


def test_paper_recipe_is_the_default_and_every_stage_switches_off():
    with pytest.raises(ConfigError, match="mps.scorer_weights: required"):
        load_config(None, BASE[:2])
    assert load_config(None, [*BASE[:2], "mps.steps=0", "dm.steps=0"]).total_steps == 14000
    assert load_config(None, [*BASE[:2], "mps.weight=0"]).total_steps == 15500     # DM + GAN without MPS
    cfg = load_config(None, BASE)
    stages = build_stages(cfg, (4, 128, 128), 1000, {})
    assert [(stage_at(stages, s).name, stage_at(stages, s).start) for s in (0, 11999, 12000, 14000, 14500, 15499)] == [
        ("mlcd", 0), ("mlcd", 0), ("lcd", 12000), ("mps", 14000), ("dm", 14500), ("dm", 14500)]
    assert stages[1].pairs is stages[2].pairs is stages[3].pairs and stages[0].pairs is not stages[1].pairs
    assert (cfg.mps.lr, cfg.mps.margin, cfg.dm.lr, cfg.dm.disc_lr) == (1e-5, 16.0, 1e-5, 1e-4)
    with pytest.raises(IndexError):
        stage_at(stages, 15500)
    skipping = build_stages(load_config(None, [*BASE, "lcd.steps=0", "mps.steps=0"]), (4, 128, 128), 1000, {})
    assert [(s.name, s.start, s.steps) for s in skipping] == [("mlcd", 0, 12000), ("dm", 12000, 1000)]


def test_required_paths_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="model.path"):
        load_config(None, ["data.prompts=[p.txt]"])
    with pytest.raises(ConfigError, match="data.prompts"):
        load_config(None, ["model.path=/m"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="must be"):
        load_config(tmp_path / "c.json")


def test_cli_reports_config_errors(tmp_path, capsys):
    assert cli_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert cli_main(["--set", "model.path=/m", "--set", "data.prompts=[x.txt]", "--set", "mps.scorer_weights=s",
                     "--print-config"]) == 0
    assert "guidance_scale: 8.0" in capsys.readouterr().out


def test_prompt_formats(tmp_path):
    (tmp_path / "a.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "p1"}) + "\n" + json.dumps({"caption": "p2"}) + "\n\"p3\"\n")
    (tmp_path / "c.csv").write_text("id,text\n1,\"x, y\"\n2,z\n")
    assert read_prompts([tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.csv"]) == \
        ["a cat", "a dog", "p1", "p2", "p3", "x, y", "z"]


def test_prompt_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "nofield.jsonl").write_text('{"title": "x"}\n')
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\xfa")
    cases = [("empty.txt", "holds no prompts"), ("nofield.jsonl", "no prompt/text/caption"),
             ("bad.jsonl", "not valid JSON"), ("nocol.csv", "column"), ("missing.txt", "not found"),
             ("x.parquet", "unknown prompts file type"), ("binary.txt", "cannot read")]
    for name, match in cases:
        with pytest.raises(PromptFileError, match=match):
            read_prompts([tmp_path / name])
    with pytest.raises(PromptFileError, match="no prompt files"):
        read_prompts([])


def test_prompt_stream_shards_shuffles_and_resumes():
    ranks = [PromptStream(10, 3, seed=1, rank=r, world=2) for r in range(2)]
    assert sorted(ranks[0].shard + ranks[1].shard) == list(range(10))
    taken = [ranks[0].next_batch() for _ in range(4)]          # 12 draws over a 5-prompt shard: 2+ epochs
    assert all(i in ranks[0].shard for b in taken for i in b)
    assert sorted(sum(taken, [])[:5]) == sorted(ranks[0].shard)
    assert sum(taken, [])[:5] != sum(taken, [])[5:10]           # reshuffled each epoch
    resumed = PromptStream(10, 3, seed=1, rank=0, world=2)
    resumed.position = 6
    assert [resumed.next_batch() for _ in range(2)] == taken[2:]


def test_stage_lr_switches_and_warms_up():
    cfg = load_config(None, [*BASE, "mlcd.steps=10", "lcd.steps=5", "mps.steps=3", "dm.steps=4", "mps.lr=2e-5",
                             "dm.lr=4e-5", "train.warmup_steps=2"])
    stages = build_stages(cfg, (4, 8, 8), 1000, {})
    assert [stage_lr(stages, s, cfg.train.warmup_steps) for s in (0, 1, 9, 10, 11, 15, 16, 18, 19, 21)] == [
        5e-5, 1e-4, 1e-4, 5e-6, 1e-5, 1e-5, 2e-5, 2e-5, 4e-5, 4e-5]


def test_even_path_pads_short_paths():
    path = even_path(torch.tensor([999, 999]), torch.tensor([499, 999]), torch.tensor([2, 1]), 3)
    assert path.tolist() == [[999, 749, 499, 499], [999, 999, 999, 999]]


def test_resume_resolution(tmp_path):
    assert resolve_resume(None, tmp_path) is None and resolve_resume("latest", tmp_path) is None
    for step in (5, 10, 2):
        folder = tmp_path / f"checkpoint-{step:08d}"
        folder.mkdir()
        for name in REQUIRED:
            (folder / name).write_text(name)
        write_manifest(folder, step)
    (tmp_path / "checkpoint-00000011.tmp").mkdir()       # an interrupted save is never picked
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-00000002", "checkpoint-00000005",
                                                          "checkpoint-00000010"]
    assert resolve_resume("latest", tmp_path).name == "checkpoint-00000010"
    assert resolve_resume(str(tmp_path / "checkpoint-00000005"), tmp_path) == tmp_path / "checkpoint-00000005"


def test_distances():
    from tlcm_train.config import DistillConfig
    from tlcm_train.losses import build_distance
    x, y = torch.zeros(4), torch.tensor([0.0, 0.001, 1.0, -3.0])
    assert build_distance(DistillConfig(distance="l2"))(x, y).item() == pytest.approx((0.001 ** 2 + 1 + 9) / 4)
    huber = build_distance(DistillConfig(distance="huber", huber_c=0.01))(x, y).item()
    per = [0.0, (0.001 ** 2 + 0.01 ** 2) ** 0.5 - 0.01, (1 + 1e-4) ** 0.5 - 0.01, (9 + 1e-4) ** 0.5 - 0.01]
    assert huber == pytest.approx(sum(per) / 4)
