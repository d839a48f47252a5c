"""Trainer app: form ↔ config ↔ command line round trips, presets, path validation, the exposure guard,
the run-state reader. No training here (see test_app_jobs.py); seconds."""
from __future__ import annotations

import json
import shlex
import time

import pytest

pytest.importorskip("gradio", reason="the trainer app needs gradio (pip install gradio)")

from tlcm_train.app import launch  # noqa: E402
from tlcm_train.app.commands import (LaunchOptions, build_argv, config_overrides, parse_command,  # noqa: E402
                                show_command)
from tlcm_train.app.form import KEYS, form_values, from_form, to_form  # noqa: E402
from tlcm_train.app.jobs import LOCK_NAME, JobInfo, JobManager, RunRecord  # noqa: E402
from tlcm_train.app.paths import (PathError, check_config_file, check_lora, check_model, check_output_dir,  # noqa: E402
                             check_prompt_files, files_inside, inside)
from tlcm_train.app.plot import loss_svg  # noqa: E402
from tlcm_train.app.app import LAUNCH_FIELDS, read_form  # noqa: E402
from tlcm_train.app.paths import check_scorer_weights  # noqa: E402
from tlcm_train.app.presets import GPU_PRESETS  # noqa: E402
from tlcm_toy import trainer_app  # noqa: E402
from tlcm_toy.scorer import PLUGIN as TOY  # noqa: E402
from tlcm_train.app.progress import failure_reason, read_run  # noqa: E402
from tlcm_train.config import Config, ConfigError, load_config, save_config  # noqa: E402


def toy_scorer_file(path):
    """A file with the toy scorer's tensor names (random weights: only the header is ever checked here)."""
    import torch
    from safetensors.torch import save_file
    from tlcm_toy.scorer import ToyScorer
    torch.manual_seed(0)
    save_file(ToyScorer().state_dict(), str(path))
    return path


@pytest.fixture()
def unusual(tmp_path) -> Config:
    """A config touching every kind of value: spaces/quotes/unicode in paths and prompts, lists, None, and
    all four stages (stage 4 off)."""
    prompts = tmp_path / "my prompts 'x'.txt"
    prompts.write_text("a cat\n")
    return load_config(None, [
        "mps.steps=30", f"mps.scorer={TOY}", f"mps.scorer_weights={json.dumps(str(tmp_path / 'scorer ü.safetensors'))}",
        "mps.margin=12.5", "dm.steps=0", "dm.gan_weight=0.5", "dm.fake_updates=2", "dm.disc_lr=3e-4",
        f"model.path={json.dumps(str(tmp_path / 'mödel dir'))}", f"data.prompts={json.dumps([str(prompts)])}",
        'data.sample_prompts=["a cat, on a mat", "猫 \\"quoted\\""]', "lora.rank=16", "lora.alpha=2.5",
        "lora.target_modules=[to_q, to_out.0]", "mlcd.lr=3e-5", "lcd.steps=0", "train.mixed_precision=bf16",
        "train.gradient_checkpointing=false", "output.sample_steps=[2, 8]", f"output.dir={tmp_path / 'out'}"])


def test_command_parses_back_to_the_same_config(unusual):
    launch = LaunchOptions()
    overrides, resume = parse_command(show_command(unusual, launch))
    assert load_config(None, overrides) == unusual and not resume
    assert overrides == config_overrides(unusual)
    argv = build_argv(unusual, launch)
    assert argv[argv.index("--mixed_precision") + 1] == "bf16"
    # only what differs from the trainer's defaults (plus the required paths) is spelled out
    assert len(overrides) == 20
    assert "mps.steps=30" in overrides and "dm.steps=0" in overrides and "dm.fake_updates=2" in overrides
    assert parse_command(show_command(unusual, launch, resume=True)) == (overrides, True)
    for bad in ("accelerate launch x.py", "accelerate launch -m tlcm_train --set", "-m tlcm_train --set 'a=b"):
        with pytest.raises(ValueError, match="trainer|shell"):
            parse_command(bad)


def test_shown_command_is_the_run_command_as_shell_text(unusual):
    launch = LaunchOptions(num_processes=8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    shown = show_command(unusual, launch)
    words = shlex.split(shown.replace("\\\n", " "))
    assert words[:2] == ["accelerate", "launch"]
    assert words[2:] == build_argv(unusual, launch)[3:]
    assert "--multi_gpu" in words and words[words.index("--machine_rank") + 1] == "1"


@pytest.mark.parametrize("launch, message", [
    (LaunchOptions(num_processes=0), "at least 1"),
    (LaunchOptions(num_processes=1, num_machines=2, main_process_ip="h"), "total over all machines"),
    (LaunchOptions(num_processes=4, num_machines=2), "main machine's IP"),
    (LaunchOptions(num_processes=4, num_machines=2, machine_rank=2, main_process_ip="h"), "rank"),
])
def test_bad_launch_options_are_named(unusual, launch, message):
    with pytest.raises(ValueError, match=message):
        build_argv(unusual, launch)


def test_form_round_trip_covers_every_config_key(unusual):
    values = to_form(unusual)
    assert values["lcd.enabled"] is False and values["lcd.steps"] == Config().lcd.steps   # paper value kept
    assert values["dm.enabled"] is False and values["dm.steps"] == Config().dm.steps
    assert values["mps.enabled"] is True and values["mps.steps"] == 30 and values["mps.scorer"] == TOY
    assert values["data.sample_prompts"] == 'a cat, on a mat\n猫 "quoted"'
    assert from_form(values) == unusual
    assert {k for k in KEYS if "." in k and not k.endswith(".enabled")} == {
        f"{s}.{k}" for s, fields in Config().to_dict().items() for k in fields}
    assert from_form({**values, "lcd.enabled": True}).lcd.steps == Config().lcd.steps
    assert {k for k in KEYS if k.endswith(".enabled")} == {"mlcd.enabled", "lcd.enabled", "mps.enabled", "dm.enabled"}
    assert from_form({**values, "lora.target_modules": ""}).lora.target_modules is None


@pytest.mark.parametrize("stage", ["mlcd", "lcd", "mps", "dm"])
def test_a_stage_toggle_turns_its_steps_to_zero_and_back_to_the_paper_value(unusual, stage):
    values = to_form(unusual)
    off = from_form({**values, f"{stage}.enabled": False})
    assert getattr(off, stage).steps == 0
    assert load_config(None, parse_command(show_command(off, LaunchOptions()))[0]) == off    # and via the command
    shown = to_form(off)
    assert shown[f"{stage}.enabled"] is False
    paper = getattr(Config(), stage).steps
    assert shown[f"{stage}.steps"] == paper                 # an off stage's box shows the paper's step count
    assert getattr(from_form({**shown, f"{stage}.enabled": True}), stage).steps == paper      # on again
    assert from_form({**to_form(Config()), "model.path": "m", "data.prompts": "p.txt", "mps.scorer_weights": "w",
                      f"{stage}.enabled": True}) == load_config(None, ["model.path=m", "data.prompts=[p.txt]",
                                                                       "mps.scorer_weights=w"])     # paper default


def test_stages_3_and_4_need_scorer_weights_before_anything_launches(unusual):
    values = {**to_form(unusual), "mps.scorer_weights": ""}
    with pytest.raises(ConfigError, match="mps.scorer_weights: required"):
        from_form(values)
    with pytest.raises(ConfigError, match="mps.scorer_weights: required"):
        from_form({**values, "mps.enabled": False, "dm.enabled": True})
    assert from_form({**values, "mps.enabled": False}).mps.steps == 0       # stages 3-4 off: not needed
    assert from_form({**values, "mps.weight": 0}).mps.weight == 0           # preference term off: not needed


@pytest.mark.parametrize("key, value, message", [
    ("lora.rank", 2.5, "lora.rank: expected a whole number"),
    ("mlcd.lr", None, "mlcd.lr: empty"),
    ("train.resolution", 100, "train.resolution"),
    ("output.sample_steps", "2, nine", "output.sample_steps"),
])
def test_bad_form_values_name_the_key(unusual, key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_form({**to_form(unusual), key: value})


def test_saved_config_loads_in_the_cli_and_the_form(unusual, tmp_path):
    path = save_config(from_form(to_form(unusual)), tmp_path / "cfg.yaml")
    assert from_form(to_form(load_config(path))) == unusual


def test_gpu_presets_undo_every_toy_shrink(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_app, "TOY_SCORER", toy_scorer_file(tmp_path / "scorer.safetensors"))   # stages 3-4 on
    toy_form = {**to_form(Config()), **form_values(trainer_app.toy_settings()), "model.path": "m", "data.prompts": "p.txt"}
    assert toy_form["mps.scorer_weights"] == str(tmp_path / "scorer.safetensors")
    for name, memory in [("24 GB GPU", ["train.mixed_precision=bf16"]),
                         ("16 GB GPU", ["train.mixed_precision=bf16", "train.optimizer=adamw8bit",
                                        "mps.decode_crop=64"]),
                         ("12 GB GPU", ["train.mixed_precision=fp16", "train.optimizer=adamw8bit", "lora.rank=32",
                                        "lora.alpha=4", "output.sample_every=1000", "mps.decode_crop=64"])]:
        values = GPU_PRESETS[name].values()
        assert "model.path" not in values and "data.prompts" not in values     # the user's paths stay
        gpu_form = {**toy_form, **form_values(values)}
        assert gpu_form["mps.scorer"] == "mps" and gpu_form["mps.scorer_weights"] == ""   # not the toy's scorer
        with pytest.raises(ConfigError, match="mps.scorer_weights: required"):
            from_form(gpu_form)                     # the paper's stages 3-4 wait for the user's MPS weights
        assert from_form({**gpu_form, "mps.scorer_weights": "mps.safetensors"}) == load_config(
            None, ["model.path=m", "data.prompts=[p.txt]", "mps.scorer_weights=mps.safetensors", *memory]), name
        assert "MPS scorer weights" in GPU_PRESETS[name].summary


@pytest.mark.parametrize("with_scorer", [False, True])
def test_toy_preset_is_toy_yaml_with_the_toy_teacher(tmp_path, monkeypatch, with_scorer):
    from tlcm_toy.bench_teacher import DEFAULT_TEACHER
    from tlcm_toy.distill import TOY_CONFIG, TRAIN_PROMPTS
    monkeypatch.setenv("TLCM_TRAINER_HOME", str(tmp_path / "home"))
    scorer = tmp_path / "scorer.safetensors"
    monkeypatch.setattr(trainer_app, "TOY_SCORER", toy_scorer_file(scorer) if with_scorer else scorer)
    values = trainer_app.TOY_PRESET.values()
    assert trainer_app.TOY_YAML == TOY_CONFIG
    assert check_model(values["model.path"]) == DEFAULT_TEACHER.resolve()        # tokenizers generated
    prompts, count = check_prompt_files(values["data.prompts"])
    assert count == TRAIN_PROMPTS and prompts[0].is_relative_to(tmp_path / "home")
    late = ([f"mps.steps={trainer_app.TOY_LATE_STEPS['mps']}", f"dm.steps={trainer_app.TOY_LATE_STEPS['dm']}",
             f"mps.scorer_weights={scorer}"] if with_scorer else ["mps.steps=0", "dm.steps=0"])
    expected = load_config(TOY_CONFIG, [f"model.path={values['model.path']}", f"data.prompts=[{prompts[0]}]",
                                        f"mps.scorer={TOY}", *late])
    assert from_form({**to_form(Config()), **form_values(values)}) == expected    # every toy.yaml value
    summary = trainer_app.TOY_PRESET.summary
    assert "min on an idle 2-core CPU" in summary and f"{expected.mlcd.steps} MLCD" in summary
    assert ("DM/GAN steps (toy scorer)" in summary) == with_scorer and ("are off" in summary) != with_scorer


def test_scorer_weights_path_checks(tmp_path):
    toy = toy_scorer_file(tmp_path / "toy.safetensors")
    assert check_scorer_weights(str(toy), TOY) == toy
    (tmp_path / "garbage.safetensors").write_bytes(b"garbage")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    for raw, kind, message in [("", TOY, "empty"), (tmp_path / "nope.safetensors", "mps", "does not exist"),
                               (tmp_path, TOY, "is a folder"), (tmp_path / "w.ckpt", "mps", "must end in"),
                               (tmp_path / "garbage.safetensors", TOY, "not a readable .safetensors"),
                               (toy, "mps", "is not a mps scorer")]:            # the toy file under the MPS kind
        with pytest.raises(PathError, match=message):
            check_scorer_weights(raw, kind)


def test_the_form_checks_scorer_weights_only_while_stages_3_4_use_them(unusual, tmp_path, monkeypatch):
    from tlcm_toy.bench_teacher import DEFAULT_TEACHER, ensure_tokenizers
    monkeypatch.chdir(tmp_path)
    values = {**to_form(unusual), "model.path": str(ensure_tokenizers(DEFAULT_TEACHER)),
              "mps.scorer_weights": "scorer ü.safetensors"}                    # relative to the app's folder

    def args(changes=None):
        shown = {**values, **(changes or {})}
        return [shown[k] for k in KEYS] + [getattr(LaunchOptions(), n) for n in LAUNCH_FIELDS]
    with pytest.raises(PathError, match=r"Scorer weights \(toy\): .*scorer ü.safetensors does not exist"):
        read_form(args())
    toy_scorer_file(tmp_path / "scorer ü.safetensors")
    config, _ = read_form(args())
    assert config.mps.scorer_weights == str(tmp_path / "scorer ü.safetensors")          # made absolute
    with pytest.raises(PathError, match="is not a mps scorer"):
        read_form(args({"mps.scorer": "mps"}))
    for off in ({"mps.enabled": False}, {"mps.weight": 0}):                 # stage 3 off / preference term off
        config, _ = read_form(args({**off, "mps.scorer_weights": "gone.safetensors"}))
        assert config.mps.scorer_weights == "gone.safetensors"             # kept as typed, never opened


def test_model_path_checks(tmp_path):
    for bad, message in [("", "empty"), (tmp_path / "nope", "does not exist"), (tmp_path, "no model_index.json")]:
        with pytest.raises(PathError, match=message):
            check_model(bad)
    (tmp_path / "m.ckpt").write_bytes(b"x")
    with pytest.raises(PathError, match="single-file .safetensors"):
        check_model(tmp_path / "m.ckpt")
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    with pytest.raises(PathError, match="not a readable .safetensors"):
        check_model(tmp_path / "m.safetensors")


def test_prompt_output_config_and_lora_path_checks(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "p.csv").write_text("prompt\na dog\na cat\n")
    assert check_prompt_files([str(tmp_path / "p.csv"), " "])[1] == 2
    for raws, message in [([], "at least one"), ([str(tmp_path)], "is a folder"),
                          ([str(tmp_path / "empty.txt")], "holds no prompts"), (["x.pdf"], "unknown prompts file")]:
        with pytest.raises(PathError, match=message):
            check_prompt_files(raws)
    with pytest.raises(PathError, match="is a file"):
        check_output_dir(tmp_path / "p.csv")
    with pytest.raises(PathError, match="cannot be created"):
        check_output_dir(tmp_path / "p.csv" / "sub")
    with pytest.raises(PathError, match="too broad"):
        check_output_dir("~")
    assert check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    with pytest.raises(PathError, match=".yaml"):
        check_config_file(tmp_path / "p.csv", must_exist=True)
    with pytest.raises(PathError, match="does not exist"):
        check_config_file(tmp_path / "c.toml", must_exist=True)
    with pytest.raises(PathError, match="adapter_config.json"):
        check_lora(tmp_path)
    with pytest.raises(PathError, match=".safetensors file or a PEFT"):
        check_lora(tmp_path / "p.csv")


def test_reading_stays_inside_the_output_folder(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    root = tmp_path / "out"
    (root / "samples").mkdir(parents=True)
    (root / "samples" / "step-00000001.png").write_bytes(b"ok")
    (root / "samples" / "step-00000002.png").symlink_to(secret)
    (root / "status.json").symlink_to(tmp_path / "secret.png")
    assert [p.name for p in files_inside(root, "samples/step-*.png")] == ["step-00000001.png"]
    assert inside(root, "status.json") is None and inside(root, "../secret.png") is None
    assert read_run(JobInfo(root, alive=False)).state == "idle"


def test_run_states_from_the_folder(tmp_path):
    record = RunRecord(pid=1, create_time=0.0, argv=["x"], log_offset=0, started=0.0, returncode=1)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/trainer-app.log").write_text(
        "Traceback (most recent call last):\nValueError: model.path broken\n"
        "subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1.\n")
    view = read_run(JobInfo(tmp_path, alive=False, record=record))
    assert view.state == "failed" and view.reason == "ValueError: model.path broken"
    assert failure_reason(["tlcm-train: config error: x", "KeyError: y"], 2) == "tlcm-train: config error: x"
    assert failure_reason(["just output"], 137) == "the trainer exited with code 137"
    assert "smaller VRAM preset" in failure_reason(["torch.OutOfMemoryError: CUDA out of memory. Tried"], 1)
    (tmp_path / "status.json").write_text(json.dumps({"state": "running", "step": 3, "total_steps": 9, "eta_s": 4}))
    (tmp_path / "logs/metrics.jsonl").write_text(
        '{"step": 1, "loss/mlcd": 0.5, "it_per_s": 2.0}\n{"step": 2, "loss/lcd": 0.25, "it_per_s": 4.0}\n{"st')
    view = read_run(JobInfo(tmp_path, alive=True, record=record))
    assert (view.state, view.step, view.total, view.eta_s, view.it_per_s) == ("running", 3, 9, 4, 4.0)
    assert [r["series"] for r in view.losses] == ["mlcd", "lcd"] and view.lora_files == {}
    record.stop_requested = True
    assert read_run(JobInfo(tmp_path, alive=True, record=record)).state == "stopping"


def test_exposing_the_app_needs_a_password_or_an_explicit_risk(capsys):
    assert launch.is_loopback("127.0.0.1") and launch.is_loopback("::1") and launch.is_loopback("localhost")
    assert not launch.is_loopback("0.0.0.0") and not launch.is_loopback("192.168.1.5")
    assert launch.main(["--host", "0.0.0.0"]) == 2
    assert "--password" in capsys.readouterr().err
    assert launch.build_parser().parse_args([]).host == "127.0.0.1"


def test_loss_plot_draws_one_curve_per_stage():
    svg = loss_svg([{"step": 1, "series": "mlcd", "loss": 1e-3}, {"step": 2, "series": "mlcd", "loss": 1e-5},
                    {"step": 3, "series": "lcd", "loss": 2.0}, {"step": 4, "series": "lcd", "loss": 0.0}])
    assert "data-series='mlcd lcd'" in svg and svg.count("<polyline") == 2
    assert ">1e-12<" in svg and ">1e1<" in svg and ">1e2<" not in svg      # a zero loss is clamped, not lost
    assert "appear after the first step" in loss_svg([])


def test_a_lock_counts_only_while_its_process_lives(tmp_path):
    import psutil
    me = psutil.Process()
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
    assert JobManager().info(tmp_path).alive and lock.exists()
    lock.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 100}))   # a recycled pid
    assert not JobManager().info(tmp_path).alive and not lock.exists()                     # stale: cleared


def test_signed_terms_are_drawn_on_a_linear_axis_with_the_legend_beside_the_plot():
    import re
    rows = [{"step": s, "series": "dm", "loss": 0.1 * s} for s in (1, 2, 3)]
    rows += [{"step": s, "series": "gan", "loss": v} for s, v in ((1, 0.4), (2, -0.3), (3, -1.2))]
    rows += [{"step": 3, "series": "odd", "loss": -2.0}]            # any term gone negative moves there too
    svg = loss_svg(rows)
    assert "data-series='dm gan odd'" in svg and "data-linear='gan odd'" in svg
    log_panel, linear_panel = svg.split("<svg")[1:]
    assert "log scale" in log_panel and "loss-dm" in log_panel and "loss-gan" not in log_panel
    assert "linear scale" in linear_panel and "loss-gan" in linear_panel and "class='zero'" in linear_panel
    assert ">-1.5<" in linear_panel or ">-2<" in linear_panel                  # the axis reaches below zero
    for panel in (log_panel, linear_panel):                           # legend right of every curve point
        xs = [float(x) for pts in re.findall(r"points='([^']*)'", panel) for x in re.findall(r"([\d.]+),", pts)]
        legend = [float(x) for x in re.findall(r"class='legend' x='([\d.]+)'", panel)]
        assert legend and min(legend) > max(xs)
    assert "data-linear=''" in loss_svg([{"step": 1, "series": "mlcd", "loss": 0.5}])


def test_the_log_shows_one_line_per_step_and_the_progress_bar_is_no_failure_reason():
    from tlcm_train.app.progress import one_line_per_step
    bar = "tlcm-train:  17%|█▋        | 1/6 [00:01<00:05,  1.17s/it"
    lines = [bar + "]", bar + ", loss=3.4e-05, stage=mlcd]", "INFO tlcm_train.loop: something",
             "tlcm-train:  33%|███▎      | 2/6 [00:02<00:03,  1.05it/s, loss=3.4e-05, stage=mlcd]",
             "tlcm-train:  33%|███▎      | 2/6 [00:02<00:03,  1.05it/s, loss=4.1e-05, stage=mlcd]"]
    assert one_line_per_step(lines) == [lines[1], lines[2], lines[4]]
    assert failure_reason([lines[4], "RuntimeError: boom"], 1) == "RuntimeError: boom"


def test_a_resumed_run_shows_the_step_it_continues_from_before_its_first_status(tmp_path):
    from tlcm_train.app.jobs import latest_checkpoint_step
    for step in (4, 12):
        (tmp_path / f"checkpoints/checkpoint-{step:08d}").mkdir(parents=True)
    assert latest_checkpoint_step(tmp_path) == 12 and latest_checkpoint_step(tmp_path / "none") is None
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs/trainer-app.log"
    log.write_text("=== tlcm-trainer: accelerate launch ...\n")
    record = RunRecord(pid=1, create_time=0.0, argv=["x"], log_offset=0, started=0.0, resume=True, resume_step=12)
    save_config(load_config(None, ["model.path=m", "data.prompts=[p.txt]", "mlcd.steps=20", "lcd.steps=4",
                                   "mps.steps=0", "dm.steps=0"]), tmp_path / "config.yaml")
    view = read_run(JobInfo(tmp_path, alive=True, record=record))          # loading: no status.json yet
    assert (view.state, view.step, view.total, view.resumed_from) == ("starting", 12, 24, 12)
    log.write_text(log.read_text() + "INFO tlcm_train.loop: resumed from /x/checkpoint-00000008 at step 8\n")
    assert read_run(JobInfo(tmp_path, alive=True, record=record)).step == 8     # the trainer's own word wins
    (tmp_path / "status.json").write_text(json.dumps({"state": "running", "step": 9, "total_steps": 24}))
    view = read_run(JobInfo(tmp_path, alive=True, record=record))
    assert (view.step, view.resumed_from) == (9, 8)
    from tlcm_train.app.app import status_html
    html = status_html(view, tmp_path)
    assert "<span id='run-step'>9</span>/24" in html and "resumed from step 8" in html and "id='run-eta'" in html
    fresh = RunRecord(pid=1, create_time=0.0, argv=["x"], log_offset=0, started=0.0)
    assert read_run(JobInfo(tmp_path, alive=True, record=fresh)).resumed_from is None


def test_gpu_memory_is_the_trainers_processes_else_the_whole_gpu():
    from tlcm_train.app.gpu import GpuMemory, GpuWatch, memory_text, parse_apps, parse_gpus, read_gpu_memory
    apps, gpus = "4242, 7000\n99, 100\n4243, 1000\n", "0, 9000, 81559\n1, 500, 81559\n"
    assert parse_apps(apps) == {4242: 7000 * 2**20, 99: 100 * 2**20, 4243: 1000 * 2**20}
    assert parse_gpus(gpus) == [(9000 * 2**20, 81559 * 2**20), (500 * 2**20, 81559 * 2**20)]

    def smi(args):
        return apps if "--query-compute-apps=pid,used_memory" in args else gpus
    assert read_gpu_memory({4242, 4243}, smi) == GpuMemory(8000 * 2**20, 2 * 81559 * 2**20, "trainer processes")
    assert read_gpu_memory({1}, smi).scope == "whole GPU"                 # pids of another namespace
    assert read_gpu_memory({1}, lambda args: "") is None                  # no GPU answered
    readings = iter([GpuMemory(5 * 2**30, 80 * 2**30, "trainer processes"),
                     GpuMemory(3 * 2**30, 80 * 2**30, "trainer processes")])
    watch = GpuWatch(lambda pids: next(readings), interval=0.0)
    watch.reading("run", {1}, True)
    now = watch.reading("run", {1}, True)
    assert memory_text(now, True) == ("GPU memory (trainer processes): 3.0 GiB now · peak 5.0 GiB seen · of "
                                      "80.0 GiB")
    assert watch.reading("run", {1}, False) == now                       # ended: no further query
    assert memory_text(None, True) == ""


def test_sample_grids_are_labelled_whole_and_the_first_one_is_announced(tmp_path):
    import numpy as np
    from PIL import Image
    from tlcm_train.app.sample_grids import CELL, HEADER, first_sample_step, labelled, note
    grid = np.zeros((64, 128, 3), np.uint8)
    grid[:, 32:64] = 255                                              # column 2 white
    Image.fromarray(grid).save(tmp_path / "step-00000010.png")
    image, caption = labelled(tmp_path / "step-00000010.png", (1, 2, 4, 8), 2)
    assert caption == "step 10 · columns: 1 / 2 / 4 / 8 sampling steps"
    assert image.size == (4 * CELL, HEADER + 2 * CELL)
    cells = np.asarray(image)[HEADER:]
    assert cells[:, CELL:2 * CELL].min() == 255 and cells[:, :CELL].max() == 0     # every cell whole, in place
    assert np.asarray(image)[:HEADER].min() < 128                                    # the labels are drawn
    assert labelled(tmp_path / "step-00000010.png", (2, 4, 8), 2)[1] == "step 10"    # does not fit: as it is
    assert first_sample_step(0, 10, 44) == 10 and first_sample_step(13, 10, 44) == 20
    assert first_sample_step(0, 100, 44) == 44 and first_sample_step(5, 0, 44) is None
    assert "first samples at step 20" in note(False, 10, (2, 4), 13, 44, 2)
    assert "newest first" in note(True, 10, (2, 4), 13, 44, 2) and "off" in note(False, 0, (2, 4), 0, 44, 2)


def test_errors_point_at_the_field_by_its_label(unusual, tmp_path):
    from tlcm_train.app.app import setup_spots, try_spots
    from tlcm_train.app.form import FIELDS
    from tlcm_train.app.limits import LimitError
    spots = setup_spots({f.key: f for f in FIELDS})

    def located(values=None, launch=None):
        shown = {**to_form(unusual), "mps.scorer_weights": str(toy_scorer_file(tmp_path / "s.safetensors")),
                 **(values or {})}
        options = {**vars(LaunchOptions()), **(launch or {})}
        with pytest.raises((ConfigError, PathError, LimitError, ValueError)) as refused:
            read_form([shown[k] for k in KEYS] + [options[n] for n in LAUNCH_FIELDS])
        return spots.locate(refused.value), spots.message(refused.value, spots.locate(refused.value))

    where, message = located({"train.batch_size": 2.5})
    assert where.keys == ("train.batch_size",) and where.text == "expected a whole number, got 2.5"
    assert message == "**Error** in **batch size** (`train.batch_size`), Setup tab: expected a whole number, got 2.5"
    where, message = located({"mlcd.lr": -1.0})
    assert where.where == "Advanced › mlcd › lr" and spots.spots["mlcd.lr"].advanced and "`mlcd.lr`" in message
    assert located({"model.path": str(tmp_path / "nope")})[0].keys == ("model.path",)
    assert "no model_index.json" in located({"model.path": str(tmp_path)})[0].text
    assert located(launch={"main_process_port": 70000})[0].keys == ("launch.main_process_port",)
    assert located(launch={"num_processes": 4, "num_machines": 2})[0].keys == ("launch.main_process_ip",)
    assert located({k: False for k in ("mlcd.enabled", "lcd.enabled", "mps.enabled", "dm.enabled")})[0].keys == (
        "mlcd.enabled", "lcd.enabled", "mps.enabled", "dm.enabled")
    assert spots.locate(ValueError("something else")) is None
    assert spots.message(ValueError("something else"), None) == "**Error:** something else"
    assert try_spots().locate(LimitError("Width: a whole number from 8 to 2,048 in the app, got 5")).keys == (
        "try.width",)
    assert try_spots().locate(PathError("Base model: /x does not exist")).keys == ("try.model",)


def test_field_notes_are_drawn_and_cleared():
    from tlcm_train.app.feedback import ERROR, Spot, Spots, render
    spots = Spots()
    spots.add(Spot("a.x", "x", "f-a-x", "its info", "setup", advanced=True, config_key=True))
    spots.add(Spot("b.y", "y", "f-b-y", "", "try"))
    notes = spots.notes_after({"b.y": ("ok", "fine", True)}, spots.locate(ValueError("a.x: bad")))
    assert notes == {"a.x": (ERROR, "bad", True), "b.y": ("ok", "fine", False)}
    updates, advanced, tab = render(spots.spots, notes, {})
    assert updates[0]["info"] == "⚠ bad" and updates[0]["elem_classes"] == ["tlcm-invalid", "tlcm-new"]
    assert updates[1]["info"] == "✓ fine" and advanced and tab == "setup"
    updates, advanced, tab = render(spots.spots, spots.notes_after(notes, None), notes)
    assert updates[0]["info"] == "its info" and updates[0]["elem_classes"] == [] and updates[1] is None
    assert not advanced and tab is None


def test_number_fields_never_round_and_the_command_follows_the_form(tmp_path):
    from tlcm_train.app.app import _component, command_preview, setup_spots
    from tlcm_train.app.form import FIELDS
    by_key = {f.key: f for f in FIELDS}
    assert _component(by_key["train.batch_size"], 2).precision is None
    spots = setup_spots(by_key)
    launch = [getattr(LaunchOptions(), n) for n in LAUNCH_FIELDS]
    toy = {**to_form(Config()), **form_values(trainer_app.toy_settings()), "model.path": "m", "data.prompts": "p.txt",
           "output.dir": str(tmp_path / "out")}
    command = command_preview([toy[k] for k in KEYS] + launch, spots)
    assert "train.resolution=32" in command and f'output.dir="{tmp_path / "out"}"' in command
    gpu = {**toy, **form_values(GPU_PRESETS["24 GB GPU"].values())}
    refused = command_preview([gpu[k] for k in KEYS] + launch, spots)
    assert refused.startswith("# Train would refuse the form as it is: Scorer weights (stages 3-4): required")
    late_off = {**gpu, "mps.enabled": False, "dm.enabled": False}
    command = command_preview([late_off[k] for k in KEYS] + launch, spots)
    assert "--mixed_precision bf16" in command and "train.resolution" not in command
    assert load_config(None, parse_command(command)[0]).mps.steps == 0


@pytest.mark.optional_layer
def test_gpu_memory_of_a_cuda_process_is_read(tmp_path):
    """On a machine with an NVIDIA GPU: a process holding 256 MiB is seen (by pid, or in the whole GPU's use)."""
    import shutil
    import subprocess
    import sys
    import torch
    from tlcm_train.app.gpu import read_gpu_memory
    if shutil.which("nvidia-smi") is None or not torch.cuda.is_available():
        pytest.skip("no NVIDIA GPU here")
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time, torch\n"
                               "x = torch.empty(256 * 2**20, dtype=torch.uint8, device='cuda')\n"
                               f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)"])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the CUDA process did not start"
            time.sleep(0.2)
        reading = read_gpu_memory({holder.pid})
        assert reading is not None and reading.used >= 256 * 2**20 and reading.total > reading.used
        assert reading.scope in ("trainer processes", "whole GPU")
    finally:
        holder.kill()
