"""Trainer app, safe by default, through its handler functions: Save config never replaces a file unasked
nor writes outside the chosen folder; every input has a limit named in the refusal; a fresh run over an
earlier one needs "Start over" (passed on as --overwrite) and resuming is offered first; resuming reads
no checkpoint in the app; the trainer's own refusal (its folder lock) is what the app shows. A no-op
process stands in for the trainer except in the last test, which runs the real CLI up to its refusal.
About 20 s on 2 shared CPU cores, most of it that one trainer start."""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("gradio", reason="the trainer app needs gradio (pip install gradio)")

from tlcm_train.app.app import LAUNCH_FIELDS, load_config_file, read_form, save_config_file  # noqa: E402
from tlcm_train.app.commands import LaunchOptions, parse_command  # noqa: E402
from tlcm_train.app.form import KEYS, from_form, to_form  # noqa: E402
from tlcm_train.app.jobs import JobError, JobManager  # noqa: E402
from tlcm_train.app.limits import LimitError  # noqa: E402
from tlcm_train.app.paths import PathError, check_lora  # noqa: E402
from tlcm_train.app.progress import read_run  # noqa: E402
from tlcm_train.app.try_it import generate_images, teacher_images  # noqa: E402
from tlcm_train.config import Config, load_config  # noqa: E402


def config_in(output_dir: Path, *overrides: str) -> Config:
    """A valid config (its paths need not exist here) writing to ``output_dir``."""
    return load_config(None, ['model.path="/models/sdxl"', 'data.prompts=["/data/p.txt"]', "mps.steps=0",
                              "dm.steps=0", f"output.dir={json.dumps(str(output_dir))}", *overrides])


def form_args(tmp_path: Path, values: dict | None = None, launch: dict | None = None) -> list:
    """What the page sends: the form's values in ``KEYS`` order, then the launch fields."""
    shown = {**to_form(config_in(tmp_path / "run")), **(values or {})}
    options = {**vars(LaunchOptions()), **(launch or {})}
    return [shown[k] for k in KEYS] + [options[n] for n in LAUNCH_FIELDS]


# --- Save config ---------------------------------------------------------------------------------------

def test_save_config_replaces_a_file_only_when_overwrite_is_ticked(tmp_path):
    first, second = config_in(tmp_path / "a"), config_in(tmp_path / "b")
    assert save_config_file(first, str(tmp_path), "cfg.yaml", overwrite=False).startswith(f"Saved {tmp_path}")
    with pytest.raises(PathError) as refused:
        save_config_file(second, str(tmp_path), "cfg.yaml", overwrite=False)
    assert str(refused.value) == (f'Config file: {tmp_path / "cfg.yaml"} exists; tick "Overwrite" and press Save '
                                  "config again to replace it")
    assert load_config_file(str(tmp_path), "cfg.yaml") == first
    save_config_file(second, str(tmp_path), "cfg.yaml", overwrite=True)
    assert load_config_file(str(tmp_path), "cfg.yaml") == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]       # no temporary file left


@pytest.mark.parametrize("name", ["../out.yaml", "sub/../../out.yaml", "ABSOLUTE", "escape.yaml", "dangling.yaml",
                                  "linked/out.yaml"])
def test_save_config_never_writes_outside_the_chosen_folder(tmp_path, name):
    chosen, outside = tmp_path / "chosen", tmp_path / "outside"
    (chosen / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "victim.yaml").write_text("mine\n")
    (chosen / "escape.yaml").symlink_to(outside / "victim.yaml")          # a symlink pointing out
    (chosen / "dangling.yaml").symlink_to(outside / "new.yaml")           # ... at a file not there yet
    (chosen / "linked").symlink_to(outside, target_is_directory=True)     # a folder symlink pointing out
    name = str(outside / "out.yaml") if name == "ABSOLUTE" else name
    with pytest.raises(PathError, match=f"Config file: .* leads outside the folder {chosen}"):
        save_config_file(config_in(tmp_path), str(chosen), name, overwrite=True)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.yaml"]
    assert (outside / "victim.yaml").read_text() == "mine\n"
    with pytest.raises(PathError, match="leads outside"):
        load_config_file(str(chosen), name)


def test_save_config_writes_inside_the_chosen_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("sub/inner.yaml", str(tmp_path / "abs.yaml"), "sub/../up.yaml"):
        save_config_file(config_in(tmp_path), str(tmp_path), name, overwrite=False)
    assert {p.name for p in tmp_path.rglob("*.yaml")} == {"inner.yaml", "abs.yaml", "up.yaml"}
    with pytest.raises(PathError, match="is not an existing folder"):
        save_config_file(config_in(tmp_path), str(tmp_path / "missing"), "cfg.yaml", overwrite=False)


# --- limits on every input -----------------------------------------------------------------------------

class NoSampler:
    def generate(self, *args, **kwargs):
        raise AssertionError("a refused request reached the model")

    teacher = generate


TRY_IT = dict(model="/models/sdxl", lora="/loras/tlcm.safetensors", prompt="a cat", steps=4, strength=1.0, seed=0,
              width=1024, height=1024)


@pytest.mark.parametrize("field, value, message", [
    ("width", 16384, r"Width: a whole number from 8 to 2,048 in the app, got 16384$"),
    ("height", 16384, "Height: a whole number from 8 to 2,048"),
    ("width", 1000.5, "Width: a whole number"),
    ("steps", 50, "Steps: a whole number from 1 to 8"),
    ("seed", 2**40, "Seed: a whole number from 0 to 4,294,967,295"),
    ("seed", -1, "Seed: a whole number from 0"),
    ("strength", 5.0, "LoRA strength: a number from 0 to 2 in the app"),
    ("strength", float("nan"), "LoRA strength: a number from 0 to 2"),
    ("prompt", "x" * 5000, "Prompt: at most 1,000 characters in the app, got 5,000"),
])
def test_try_it_refuses_requests_beyond_the_limits(field, value, message):
    with pytest.raises(LimitError, match=message):
        generate_images(NoSampler(), **{**TRY_IT, field: value})


TEACHER = dict(model="/models/sdxl", prompt="a cat", seed=0, width=1024, height=1024, name="DDIM", steps=25,
               guidance=8.0)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 101, "Teacher steps: a whole number from 1 to 100 in the app, got 101"),
    ("steps", 2.5, "Teacher steps: a whole number"),
    ("guidance", 31.0, "Teacher CFG: a number from 1 to 30 in the app"),
    ("guidance", 0.5, "Teacher CFG: a number from 1 to 30"),
    ("name", "PLMS", "Teacher sampler: one of DDIM, Euler"),
    ("seed", -1, "Seed: a whole number from 0"),
])
def test_the_teacher_baseline_refuses_requests_beyond_the_limits(field, value, message):
    with pytest.raises(ValueError, match=message):
        teacher_images(NoSampler(), **{**TEACHER, field: value})


def test_try_it_passes_requests_at_the_limits():
    class Recorder:
        def generate(self, model, lora, strength, settings):
            self.seen = (strength, settings)
            return []

    sampler = Recorder()
    generate_images(sampler, **{**TRY_IT, "steps": 8.0, "strength": 2.0, "seed": 2**32 - 1, "width": 2048,
                                "height": "2048", "prompt": "x" * 1000})
    strength, settings = sampler.seen
    assert strength == 2.0 and (settings.steps, settings.seed, settings.width, settings.height) == (
        8, 2**32 - 1, 2048, 2048)


@pytest.mark.parametrize("key, value, message", [
    ("mlcd.steps", 10**7, r"mlcd.steps: at most 1,000,000 in the app, got 10,000,000$"),
    ("train.batch_size", 100_000, "train.batch_size: at most 256 in the app"),
    ("train.resolution", 16384, "train.resolution: at most 2,048 in the app"),
    ("lora.rank", 100_000, "lora.rank: at most 1,024"),
    ("lcd.teacher_steps", 10_000, "lcd.teacher_steps: at most 100"),
    ("output.keep_checkpoints", 10**6, "output.keep_checkpoints: at most 100"),
    ("train.seed", 2**33, "train.seed: at most 4,294,967,295"),
    ("mlcd.lr", "inf", "mlcd.lr: must be a finite number"),
    ("data.sample_prompts", "\n".join(["a cat"] * 65), r"data.sample_prompts \(number of items\): at most 64"),
    ("data.sample_prompts", "x" * 1001, "data.sample_prompts: at most 1,000 characters"),
    ("model.path", "m" * 5000, "model.path: at most 4,096 characters"),
    ("output.sample_every", 1, r"output.sample_every: at least 2 for 12,001 steps in the app \(at most 10,000 "
                               "sample grids\), got 1"),
])
def test_the_form_refuses_values_beyond_the_limits(tmp_path, key, value, message):
    with pytest.raises(LimitError, match=message):
        read_form(form_args(tmp_path, {key: value, "lcd.steps": 1}))      # 12,000 + 1 steps in all


def test_the_form_passes_values_at_the_limits(tmp_path):
    at_limits = {"mlcd.steps": 1_000_000, "train.batch_size": 256, "train.resolution": 2048, "lora.rank": 1024,
                 "train.seed": 2**32 - 1, "output.sample_every": 101,
                 "data.sample_prompts": "\n".join(["x" * 1000] * 64)}
    config = from_form(dict(zip(KEYS, form_args(tmp_path, at_limits))))
    assert (config.mlcd.steps, config.train.resolution, len(config.data.sample_prompts)) == (1_000_000, 2048, 64)


@pytest.mark.parametrize("launch, message", [
    ({"num_processes": 1000}, "GPUs / processes per machine: at most 16 in the app, got 1,000"),
    ({"num_processes": 2000, "num_machines": 1000, "main_process_ip": "10.0.0.1"}, "machines: at most 64"),
    ({"main_process_port": 70000}, "main machine port.*: a whole number from 0 to 65,535"),
    ({"num_processes": float("inf")}, r"GPUs / processes \(total\): a whole number"),
    ({"gpu_ids": "0," * 3000}, "GPU ids: at most 4,096 characters"),
])
def test_launch_options_have_limits(tmp_path, launch, message):
    with pytest.raises(LimitError, match=message):
        read_form(form_args(tmp_path, launch=launch))


def test_command_and_path_fields_have_limits():
    with pytest.raises(LimitError, match="command: at most 100,000 characters"):
        parse_command("accelerate launch -m tlcm_train" + " --set mlcd.steps=1" * 6000)
    with pytest.raises(LimitError, match="LoRA: at most 4,096 characters"):
        check_lora("l" * 5000)


# --- fresh run, resume, and the trainer's refusals ------------------------------------------------------

@pytest.fixture()
def launched(monkeypatch) -> list[list[str]]:
    """The argv of each run the app launches, while a no-op process stands in for the trainer."""
    seen: list[list[str]] = []
    spawn = JobManager._spawn

    def record(self, output_dir, argv, resume):
        seen.append(argv)
        return spawn(self, output_dir, [sys.executable, "-c", "pass"], resume)
    monkeypatch.setattr(JobManager, "_spawn", record)
    return seen


def wait_until_done(manager: JobManager, folder: Path, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while manager.info(folder).alive or read_run(manager.info(folder)).active:
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.1)
    return read_run(manager.info(folder))


def earlier_run(folder: Path, checkpoint: bool = True) -> None:
    """What a run leaves: its config snapshot and status, and a checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("earlier\n")
    (folder / "status.json").write_text('{"state": "stopped", "step": 4}')
    if checkpoint:
        (folder / "checkpoints/checkpoint-00000004").mkdir(parents=True)


def test_a_fresh_run_over_an_earlier_one_needs_start_over(tmp_path, launched):
    folder = tmp_path / "run"
    earlier_run(folder)
    manager = JobManager()
    with pytest.raises(JobError) as refused:
        manager.start(config_in(folder), LaunchOptions())
    assert str(refused.value) == (f"{folder} holds an earlier run (checkpoints, config.yaml, status.json): press "
                                  'Resume latest to continue it, or tick "Start over" and press Train to replace '
                                  "its outputs")
    assert launched == [] and (folder / "config.yaml").read_text() == "earlier\n"
    manager.start(config_in(folder), LaunchOptions(), overwrite=True)
    wait_until_done(manager, folder)
    assert launched[-1][-1] == "--overwrite" and "--resume" not in launched[-1]
    manager.start(config_in(folder), LaunchOptions(), resume=True)
    wait_until_done(manager, folder)
    assert launched[-1][-2:] == ["--resume", "latest"] and "--overwrite" not in launched[-1]


def test_outputs_without_a_checkpoint_can_only_be_replaced(tmp_path, launched):
    earlier_run(tmp_path, checkpoint=False)
    with pytest.raises(JobError, match=r"holds an earlier run's outputs \(config.yaml, status.json\) and no "
                                       'checkpoint to resume: tick "Start over"'):
        JobManager().start(config_in(tmp_path), LaunchOptions())
    assert launched == []


def test_the_apps_own_files_and_other_files_are_no_earlier_run(tmp_path, launched):
    """A run that failed before writing anything leaves only the app's record and log; a user's own files
    are not the trainer's either: a fresh start needs no confirmation and passes no --overwrite."""
    manager = JobManager()
    manager.start(config_in(tmp_path), LaunchOptions())         # the no-op run leaves the app's files
    wait_until_done(manager, tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert (tmp_path / ".tlcm-trainer.json").is_file() and (tmp_path / "logs/trainer-app.log").is_file()
    manager.start(config_in(tmp_path), LaunchOptions())
    wait_until_done(manager, tmp_path)
    assert [argv[-1] for argv in launched] == ['output.dir="' + str(tmp_path) + '"'] * 2


def test_resuming_reads_no_checkpoint_in_the_app(tmp_path, launched, monkeypatch):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    earlier_run(tmp_path / "run")
    for name in ("trainer.pt", "rank0.pt"):                     # loading either would create the marker
        torch.save(Payload(), tmp_path / "run/checkpoints/checkpoint-00000004" / name,
                   _use_new_zipfile_serialization=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the app unpickled a file")
    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    manager = JobManager()
    manager.start(config_in(tmp_path / "run"), LaunchOptions(), resume=True)
    wait_until_done(manager, tmp_path / "run")                   # the Run tab's reads too
    assert launched[-1][-2:] == ["--resume", "latest"] and not marker.exists()


def test_the_trainers_own_refusal_is_what_the_app_shows(tmp_path):
    """A trainer started outside the app holds the folder: the app's run fails with the CLI's one line."""
    from tlcm_train.run_folder import claim_output
    folder = tmp_path / "run"
    manager = JobManager()
    with claim_output(folder, fresh=True, overwrite=False):        # this process is that other trainer
        manager.start(config_in(folder), LaunchOptions())
        view = wait_until_done(manager, folder, timeout=240)
    assert view.state == "failed"
    assert view.reason.startswith(f"tlcm-train: {folder} is in use by another tlcm-train run (PID {os.getpid()} ")
