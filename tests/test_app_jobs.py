"""The trainer app's job manager with the real trainer on the CPU toy preset (the toy teacher; batch 2 to
stay quick): one run per folder, stop saves, resume continues through stages 1-4 to the end, a failed run
names its reason, a restarted app reattaches; Try it generates with a LoRA and exports it. Every LoRA here
has alpha != rank and each export is checked at its exact scale with the host's own loader
(tests/lora_exports.py). The stop test holds the run at a fixed step (the trainer's HOLD_AT_STEP hook), so
it stops there, never racing the loop. ~1-2 min on 2 CPU cores."""
from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the trainer app needs gradio (pip install gradio)")
pytestmark = pytest.mark.usefixtures("one_thread")

from lora_exports import (assert_deltas, diffusers_deltas, hand_deltas, kohya_deltas, peft_deltas,  # noqa: E402
                          peft_folder_state)
from tlcm_train.app.commands import LaunchOptions, copy_config  # noqa: E402
from tlcm_train.app.form import form_values, from_form, to_form  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from tlcm.generate import GenerationSettings  # noqa: E402
from tlcm.lora import load_lora  # noqa: E402
from tlcm.models import load_sdxl_pipeline  # noqa: E402
from tlcm_train.app.jobs import JobError, JobManager  # noqa: E402
from tlcm_train.app.paths import PathError  # noqa: E402
from tlcm_toy.trainer_app import TOY_PRESET, TOY_SCORER  # noqa: E402
from tlcm_train.app.progress import read_run  # noqa: E402
from tlcm_train.app.try_it import Exports, Sampler  # noqa: E402
from tlcm_train.adapters import add_student, student_state_dict  # noqa: E402
from tlcm_train.config import Config, LoraConfig  # noqa: E402
from tlcm_train.export import export_lora  # noqa: E402
from tlcm_train.loop import HOLD_AT_STEP  # noqa: E402
from tlcm_toy.data import write_prompts  # noqa: E402


@pytest.fixture(scope="module")
def toy_config(tmp_path_factory, monkeypatch_module):
    """The CPU toy preset (the committed toy teacher, toy.yaml), at batch 2 on 64 of its prompts."""
    monkeypatch_module.setenv("TLCM_TRAINER_HOME", str(tmp_path_factory.getbasetemp() / "trainer-home"))
    monkeypatch_module.setenv("OMP_NUM_THREADS", "1")      # trainer subprocesses: tiny models lose from threads
    prompts = write_prompts(tmp_path_factory.mktemp("prompts") / "toy.txt", 64, 0)    # 64 toy prompts: quick to encode
    return copy_config(from_form({**to_form(Config()), **form_values(TOY_PRESET.values())}),
                       data={"prompts": [str(prompts)]}, train={"batch_size": 2})


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def wait_for(manager: JobManager, folder: Path, done, timeout: float = 240.0):     # generous: shared cores
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = read_run(manager.info(folder))
        if done(view):
            return view
        time.sleep(0.3)
    raise AssertionError(f"timed out; last view: {view}\n" + "\n".join(view.log_tail))


def assert_exports_at_scale(files: dict[str, Path], student: dict[str, torch.Tensor], alpha: float,
                            model_path: str) -> None:
    """kohya/diffusers/PEFT files each add exactly (alpha / r) · B · A of ``student`` with the host's own loader."""
    expected = hand_deltas(student, alpha)
    names = sorted(expected)
    assert_deltas(kohya_deltas(files["kohya"], names), expected, "kohya")
    pipe = load_sdxl_pipeline(model_path, device="cpu", dtype=torch.float32)
    assert_deltas(peft_deltas(pipe.unet, files["peft"], names), expected, "peft")
    assert_deltas(diffusers_deltas(pipe, files["diffusers"], names), expected, "diffusers")


def test_stop_saves_resume_finishes_and_one_run_per_folder(toy_config, tmp_path, monkeypatch):
    scorer = TOY_SCORER.is_file()       # without the toy scorer: stage 4 with its preference term off
    late = ({"steps": 2}, {"steps": 2}) if scorer else ({"steps": 0, "weight": 0.0}, {"steps": 4})
    config = copy_config(toy_config, mlcd={"steps": 12}, lcd={"steps": 4}, mps=late[0], dm=late[1], output={
        "dir": str(tmp_path / "run"), "checkpoint_every": 4, "sample_every": 10}, lora={"alpha": 4.0})
    assert config.total_steps == 20 and (config.lora.rank, config.lora.alpha) == (16, 4.0)    # scale 1/4
    hold = 3                            # the trainer waits after this step until it is stopped
    monkeypatch.setenv(HOLD_AT_STEP, str(hold))
    manager = JobManager()
    info = manager.start(config, LaunchOptions())
    assert info.alive and info.record.argv[1:3] == ["-m", "accelerate.commands.launch"]
    with pytest.raises(JobError, match="already using"):
        JobManager().start(config, LaunchOptions())          # a second app instance is refused too

    view = wait_for(manager, info.output_dir, lambda v: v.state == "running" and v.step >= hold)
    assert view.step == hold and view.total == 20 and view.it_per_s and view.it_per_s > 0 and view.eta_s is not None
    assert read_run(JobManager().info(info.output_dir)).state == "running"   # a fresh app reattaches
    assert manager.active_run() == f"a training run is active in {info.output_dir}"   # Try it keeps off the GPU
    manager.stop(info.output_dir)
    view = wait_for(manager, info.output_dir, lambda v: not v.active)
    assert view.state == "stopped", view.log_tail
    assert manager.active_run() is None
    stopped_at = view.step
    assert stopped_at == hold
    assert (info.output_dir / f"checkpoints/checkpoint-{stopped_at:08d}").is_dir()
    assert set(view.lora_files) == {"kohya", "diffusers", "peft"}

    with pytest.raises(JobError, match="Resume latest"):
        manager.start(config, LaunchOptions())                # a fresh start would mix two runs
    monkeypatch.delenv(HOLD_AT_STEP)
    manager.start(config, LaunchOptions(), resume=True)
    view = wait_for(manager, info.output_dir, lambda v: not v.active)
    assert view.state == "finished" and view.step == 20, view.log_tail
    log = (info.output_dir / "logs/trainer-app.log").read_text()
    assert f"checkpoint-{stopped_at:08d} at step {stopped_at}" in log and log.count("=== tlcm-trainer") == 2
    assert [p.name for p in view.samples][-1] == "step-00000020.png" and len(view.samples) >= 2
    expected = {"mlcd", "lcd", "dm", "dmd", "gan"} | ({"mps", "preference"} if scorer else set())
    assert {row["series"] for row in view.losses} == expected
    assert all(path.exists() for path in view.lora_files.values())
    # the app's run exports at the configured alpha (4 at rank 16), not at alpha = rank
    assert_exports_at_scale(view.lora_files, peft_folder_state(view.lora_files["peft"]), 4.0, config.model.path)


def test_try_it_generates_with_a_lora_and_exports_every_format(toy_config, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(Path(toy_config.model.path) / "unet")
    torch.manual_seed(5)                            # seeded (lora_A's init too): the check must not depend on test order
    add_student(unet, LoraConfig(rank=4, alpha=2, target_modules=["to_q", "to_k", "to_v"]))
    state = {k: 3 * torch.randn_like(v) if "lora_B" in k else v for k, v in student_state_dict(unet).items()}
    lora = str(export_lora(state, 2.0, tmp_path / "lora", ["kohya"])["kohya"])          # fp16, scale 1/2
    sampler, settings = Sampler(), GenerationSettings("a red circle at the top", steps=2, width=32, height=32)
    with_lora = sampler.generate(toy_config.model.path, lora, 1.0, settings, save_dir=tmp_path / "gen")[0]
    without = sampler.generate(toy_config.model.path, lora, 0.0, settings)[0]   # strength change: swapped
    assert with_lora.size == (32, 32) and len(list((tmp_path / "gen").glob("tlcm-*.png"))) == 1
    assert np.abs(np.asarray(with_lora, float) - np.asarray(without, float)).mean() > 1.0
    source, exported, exports = load_lora(lora), {}, Exports()
    for fmt in ("kohya", "diffusers", "peft"):
        path = exports.export(lora, fmt)
        written = {path.name, path.stem} if fmt == "peft" else {path.name}       # the previous export is gone
        assert {p.name for p in exports.folder.iterdir()} == written, fmt
        kept = tmp_path / "downloaded" / fmt                                    # what Gradio's copy would be
        if fmt == "peft":
            shutil.unpack_archive(path, kept)
        else:
            kept.mkdir(parents=True)
            kept = Path(shutil.copy(path, kept))
        again = load_lora(kept)
        assert len(again.modules) == len(source.modules) and again.modules, fmt
        exported[fmt] = kept
    assert_exports_at_scale(exported, {k: v.half() for k, v in state.items()}, 2.0, toy_config.model.path)
    with pytest.raises(PathError, match="does not exist"):
        exports.export(str(tmp_path / "missing.safetensors"), "kohya")
    assert (exports.folder / "tlcm_lora_peft.zip").is_file()     # a refused export removes nothing
    folder = exports.folder
    del exports                                                  # the app goes: its export folder goes with it
    gc.collect()
    assert not folder.exists()


def test_teacher_baseline_is_the_plain_model_from_the_lora_runs_noise(toy_config, tmp_path):
    """The baseline is the base model without the LoRA, sampled with DDIM and CFG from exactly the noise
    ``tlcm.generate`` starts from for the same seed and size (the core's rule: a generator per image on the
    UNet's device, seeded seed + i)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    unet = UNet2DConditionModel.from_pretrained(Path(toy_config.model.path) / "unet")
    torch.manual_seed(3)
    add_student(unet, LoraConfig(rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v"]))
    state = {k: 3 * torch.randn_like(v) if "lora_B" in k else v for k, v in student_state_dict(unet).items()}
    lora = str(export_lora(state, 4.0, tmp_path / "lora", ["kohya"])["kohya"])
    sampler, settings = Sampler(), GenerationSettings("a red circle at the top", steps=4, seed=7, width=32, height=32)
    [baseline] = sampler.teacher(toy_config.model.path, settings, "DDIM", 10, 3.0)
    [with_lora] = sampler.generate(toy_config.model.path, lora, 1.0, settings)
    [again] = sampler.teacher(toy_config.model.path, settings, "DDIM", 10, 3.0)      # after the LoRA was merged
    pipe = load_sdxl_pipeline(toy_config.model.path, device="cpu")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    side = 32 // pipe.vae_scale_factor
    noise = torch.randn((1, pipe.unet.config.in_channels, side, side), generator=torch.Generator("cpu").manual_seed(7))
    [expected] = pipe(prompt="a red circle at the top", latents=noise, num_inference_steps=10, guidance_scale=3.0,
                      height=32, width=32).images
    as_array = lambda image: np.asarray(image, dtype=float)        # noqa: E731
    assert baseline.size == (32, 32) and np.abs(as_array(baseline) - as_array(expected)).max() <= 1.0
    assert np.array_equal(as_array(baseline), as_array(again))                  # the LoRA never reaches it
    assert np.abs(as_array(baseline) - as_array(with_lora)).mean() > 1.0
    [euler] = sampler.teacher(toy_config.model.path, settings, "Euler", 10, 3.0)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    [expected_euler] = pipe(prompt="a red circle at the top", latents=noise, num_inference_steps=10,
                            guidance_scale=3.0, height=32, width=32).images
    assert np.abs(as_array(euler) - as_array(expected_euler)).max() <= 1.0
    assert not np.array_equal(as_array(euler), as_array(baseline))             # the sampler choice is used


def test_try_it_swaps_loras_in_place_and_restores_the_base_bit_for_bit(toy_config, tmp_path, monkeypatch):
    """One model load for LoRA → other strength → teacher → LoRA again; the teacher runs on the very weights
    that were loaded, and the LoRA at the same strength gives the same image again."""
    import tlcm_train.app.try_it as try_it
    unet = UNet2DConditionModel.from_pretrained(Path(toy_config.model.path) / "unet")
    torch.manual_seed(9)
    add_student(unet, LoraConfig(rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v"]))
    state = {k: 3 * torch.randn_like(v) if "lora_B" in k else v for k, v in student_state_dict(unet).items()}
    lora = str(export_lora(state, 4.0, tmp_path / "lora", ["kohya"])["kohya"])
    loads = []
    monkeypatch.setattr(try_it, "load_sdxl_pipeline", lambda path: loads.append(path) or load_sdxl_pipeline(path))
    sampler, settings = Sampler(), GenerationSettings("a red circle at the top", steps=2, seed=3, width=32, height=32)
    [first] = sampler.generate(toy_config.model.path, lora, 1.0, settings)
    loaded = {k: v.clone() for k, v in load_sdxl_pipeline(toy_config.model.path, device="cpu").unet.state_dict().items()}
    sampler.generate(toy_config.model.path, lora, 0.5, settings)
    sampler.teacher(toy_config.model.path, settings, "DDIM", 4, 3.0)
    now = sampler._pipe.unet.state_dict()
    assert all(torch.equal(now[k], v) for k, v in loaded.items())             # the LoRA is out, bit for bit
    [again] = sampler.generate(toy_config.model.path, lora, 1.0, settings)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert len(loads) == 1


def test_try_it_refuses_a_second_model_on_a_gpu_a_training_run_uses(toy_config, monkeypatch):
    import tlcm_train.app.try_it as try_it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(try_it, "load_sdxl_pipeline", lambda path: pytest.fail("loaded a model on a busy GPU"))
    settings = GenerationSettings("a red circle at the top", steps=2, width=32, height=32)
    busy = Sampler(gpu_busy=lambda: "a training run is active in /runs/a")
    with pytest.raises(ValueError, match="second copy of the model onto the GPU while a training run is active in "
                                         "/runs/a; stop the run or wait"):
        busy.teacher(toy_config.model.path, settings, "DDIM", 4, 3.0)
    manager = JobManager()
    assert manager.active_run() is None                         # nothing started here: the GPU is free


def test_failed_run_shows_the_reason_and_releases_the_folder(toy_config, tmp_path):
    config = copy_config(toy_config, model={"path": str(tmp_path / "no-such-model")},
                         output={"dir": str(tmp_path / "run")})
    manager = JobManager()
    info = manager.start(config, LaunchOptions())
    view = wait_for(manager, info.output_dir, lambda v: not v.active)
    assert view.state == "failed"
    assert "no SDXL model at" in view.reason and str(tmp_path / "no-such-model") in view.reason
    assert manager.info(info.output_dir).record.returncode != 0
    assert not (info.output_dir / ".tlcm-trainer.lock").exists()


def test_nothing_to_resume_is_refused(toy_config, tmp_path):
    with pytest.raises(JobError, match="nothing to resume"):
        JobManager().start(copy_config(toy_config, output={"dir": str(tmp_path)}), LaunchOptions(), resume=True)
