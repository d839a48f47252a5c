"""Trainer on the tiny SDXL kit: gradient trap, a short distillation that lowers the loss and exports
loadable LoRAs, exact resume after a signal, clear errors for bad paths. Seconds each on a CPU."""
from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import torch

from lora_exports import assert_deltas, diffusers_deltas, hand_deltas, kohya_deltas, peft_deltas
from tlcm.lora import load_lora, merge_lora
from tlcm.models import load_sdxl_pipeline
from tlcm.testing.build import build_tiny_sdxl
from tlcm.testing.tiny import CROSS_ATTENTION_DIM, SCHEDULER_CONFIG, TEXT_WIDTH_2, tiny_unet
from tlcm_train.adapters import add_student, require_student_active, student_parameters, student_state_dict
from tlcm_train.config import ConfigError, DistillConfig, LoraConfig, MlcdConfig, load_config
from tlcm_train.consistency import consistency_loss
from tlcm_train.diffusion import Conditioning, Denoiser, sdxl_time_ids
from tlcm_train.loop import Trainer
from tlcm_train.losses import l2_distance
from tlcm_train.prompts import PromptFileError
from tlcm_train.stage1_mlcd import MlcdStage

FAST_TARGETS = "[to_q, to_k, to_v, to_out.0]"     # a few dozen modules: PEFT's per-module cost dominates on CPU
ALPHA = 2.0           # with rank 4: alpha != rank, so an export at alpha = rank (scale 1, not 0.5) is caught


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_kit")
    (root / "prompts.txt").write_text("a red cat\na blue dog\na green car\na yellow house\n")
    return build_tiny_sdxl(root / "kit"), root / "prompts.txt"


def tiny_config(kit, out, *overrides):
    paths, prompts = kit
    return load_config(None, [
        f"model.path={paths.diffusers}", f"data.prompts=[{prompts}]", "data.sample_prompts=[a red cat, a blue dog]",
        "lora.rank=4", f"lora.alpha={ALPHA}", f"lora.target_modules={FAST_TARGETS}", "distill.num_segments=4",
        "mlcd.steps=3", "lcd.steps=2", "mps.steps=0", "dm.steps=0", "mps.batch_size=0", "dm.batch_size=0",
        "mlcd.lr=1e-3", "lcd.lr=1e-3", "train.max_grad_norm=0",
        "train.resolution=64", "train.batch_size=2", f"output.dir={out}", "output.sample_every=0",
        "output.checkpoint_every=0", "output.formats=[peft]", *overrides])


def random_cond(batch: int) -> Conditioning:
    g = torch.Generator().manual_seed(1)
    return Conditioning(torch.randn(batch, 77, CROSS_ATTENTION_DIM, generator=g),
                        torch.randn(batch, TEXT_WIDTH_2, generator=g), sdxl_time_ids(64, batch))


def test_adapter_switch_trap_and_the_training_step_pattern():
    unet = tiny_unet()
    add_student(unet, LoraConfig(rank=4, alpha=ALPHA, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"]))
    params = student_parameters(unet)
    den = Denoiser(unet, SCHEDULER_CONFIG, torch.device("cpu"))
    cond, t = random_cond(2), torch.tensor([500, 700])
    z = torch.randn(2, 4, 8, 8)

    # naive: student forward with a graph, then the teacher runs (adapters disabled), then backward
    x0, _ = den.predict(z, t, cond)
    unet.disable_adapters()
    with torch.no_grad():
        den.predict(z, t, cond)
    with pytest.raises(RuntimeError, match="adapter-switch trap"):
        require_student_active(unet)
    x0.square().mean().backward()
    assert all(p.grad is None for p in params), "the trap no longer loses gradients: revisit docs/trainer.md §3"
    unet.enable_adapters()
    unet.set_adapter("student")

    # the trainer's step: teacher first (inside the stage), then target and prediction, backward in student state
    unet.enable_gradient_checkpointing()
    unet.train()
    stage = MlcdStage(DistillConfig(num_segments=4), MlcdConfig(), (4, 8, 8))
    loss = consistency_loss(stage, den, cond, l2_distance, torch.Generator().manual_seed(0))
    require_student_active(unet)
    loss.backward()
    assert all(p.grad is not None for p in params)
    ups = [p for n, p in unet.named_parameters() if "lora_B.student" in n]
    assert all(p.grad.abs().sum() > 0 for p in ups)          # lora_B gets signal from step one (A's grads are 0 while B = 0)
    assert all(p.grad is None for n, p in unet.named_parameters() if "lora_" not in n)


def test_stage_pairs_follow_algorithms_1_and_2():
    from tlcm_train.stage2_lcd import LcdStage
    unet = tiny_unet()
    add_student(unet, LoraConfig(rank=2, alpha=1, target_modules=["to_q"]))
    den = Denoiser(unet, SCHEDULER_CONFIG, torch.device("cpu"))
    cfg = load_config(None, ["model.path=/m", "data.prompts=[p]", "mps.weight=0", "distill.num_segments=4"])
    grid = torch.tensor([999, 749, 499, 249, 0])
    g = torch.Generator().manual_seed(0)
    pair = MlcdStage(cfg.distill, cfg.mlcd, (4, 8, 8)).make_pair(den, random_cond(16), g)
    k = torch.searchsorted(-grid, -pair.boundary)                    # boundary = grid[k + 1]
    assert torch.equal(grid[k], pair.boundary) and bool((k >= 1).all())
    assert bool(((pair.t_m >= pair.boundary + 20) & (pair.t_m <= grid[k - 1])).all())
    assert torch.equal(pair.t_n, pair.t_m - 20) and len(set(pair.boundary.tolist())) > 1
    pair = LcdStage(cfg.distill, cfg.lcd, (4, 8, 8)).make_pair(den, random_cond(8), g)
    k = torch.searchsorted(-grid, -pair.t_m)
    assert torch.equal(grid[k], pair.t_m) and bool((k <= 3).all()) and torch.equal(grid[k + 1], pair.t_n)
    assert torch.isfinite(pair.z_n).all() and not torch.equal(pair.z_m, pair.z_n)


def stage_named(trainer: Trainer, name: str):
    return next(s for s in trainer.stages if s.name == name)


def eval_loss(trainer: Trainer, stage: str) -> float:
    """The stage's loss on fixed prompts and fixed noise (independent of the training RNG)."""
    cond = trainer.cache.batch(list(range(4)), trainer.device)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return sum(float(consistency_loss(stage_named(trainer, stage).pairs, trainer.denoiser, cond, trainer.distance, g))
                   for _ in range(2)) / 2


def test_gradient_accumulation_steps_on_the_mean_of_its_micro_batches(kit, tmp_path):
    """mlcd.batch_size=4 at train.batch_size=2 on one process: two micro-batches per optimizer step, the
    student's gradient the mean of theirs, the logged loss their mean, four prompts consumed."""
    trainer = Trainer(tiny_config(kit, tmp_path / "run", "mlcd.batch_size=4", "lcd.steps=0"))
    assert [(s.name, s.accumulation) for s in trainer.stages] == [("mlcd", 2)]
    stage, generator_state, position = trainer.stages[0], trainer.generator.get_state(), trainer.stream.position
    losses = []
    for _ in range(2):                  # the reference: both micro-batches from the same generator and prompts
        indices = trainer.stream.next_batch()
        outcome = stage.objective(trainer.denoiser, trainer.cache.batch(indices, trainer.device),
                                  [trainer.prompts[i] for i in indices], trainer.distance, trainer.generator)
        outcome.objective.backward()
        losses.append(float(outcome.loss.detach()))
    expected = [p.grad.clone() / 2 for p in trainer.params]
    for p in trainer.params:
        p.grad = None
    trainer.generator.set_state(generator_state)
    trainer.stream.position = position
    seen = []
    trainer.on_phase = lambda name: seen.append([p.grad.clone() for p in trainer.params]) if name == "backward" else None

    loss = trainer.train_step()
    assert len(seen) == 2 and trainer.stream.position == position + 4 and trainer.step == 1
    assert any(not torch.equal(a, b) for a, b in zip(*seen))       # the second micro-batch added its part
    for got, want in zip(seen[-1], expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    assert float(loss) == pytest.approx(sum(losses) / 2, rel=1e-6) and losses[0] != losses[1]
    assert float(trainer.values["loss/mlcd"]) == pytest.approx(sum(losses) / 2, rel=1e-6)
    with pytest.raises(ConfigError, match="mlcd.batch_size: 3 is not a multiple of train.batch_size x processes"):
        Trainer(tiny_config(kit, tmp_path / "other", "mlcd.batch_size=3"))


def test_distillation_lowers_loss_and_exports_loadable_lora(kit, tmp_path):
    cfg = tiny_config(kit, tmp_path / "run", "mlcd.steps=10", "lcd.steps=4", "output.sample_every=7",
                      "output.formats=[kohya, diffusers, peft]", "output.save_dtype=fp32")
    trainer = Trainer(cfg)
    before = {s: eval_loss(trainer, s) for s in ("mlcd", "lcd")}
    result = trainer.run()
    after = {s: eval_loss(trainer, s) for s in ("mlcd", "lcd")}
    assert result.state == "finished" and result.step == 14 and len(result.losses) == 14
    assert after["mlcd"] < before["mlcd"] and after["lcd"] < before["lcd"], (before, after)

    out = tmp_path / "run"
    logged = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 15)) and "loss/lcd" in logged[-1] and "lr" in logged[0]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert load_config(out / "config.yaml") == cfg
    grids = sorted((out / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step-00000007.png", "step-00000014.png"]
    from PIL import Image
    assert Image.open(grids[0]).size == (64 * 3, 64 * 2)          # columns 2/4/8 steps, rows = sample prompts

    # every export loads through the core at the trained scale and reproduces the student exactly when merged
    student = student_state_dict(trainer.unet)
    z, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([600]), trainer.cache.batch([0], trainer.device)
    with torch.no_grad():
        expected = trainer.denoiser.model_output(z, t, cond)
    for fmt, path in result.lora_files.items():
        lora = load_lora(path)
        scale = 1.0 if fmt == "diffusers" else ALPHA / 4      # diffusers files carry the scale folded into up
        assert len(lora.modules) == len(student) // 2 and all(m.scale == scale for m in lora.modules.values()), fmt
        unet = tiny_unet()
        assert len(merge_lora(unet, lora).matched) == len(lora.modules)
        got = Denoiser(unet, SCHEDULER_CONFIG, torch.device("cpu")).model_output(z, t, cond)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=fmt)

    # ... and each host's own loader adds exactly (alpha / r) · B · A of the student, alpha = 2 at rank 4:
    # kohya by its .alpha keys, diffusers by load_lora_weights, PEFT by PeftModel (tests/lora_exports.py)
    expected_deltas = hand_deltas(student, ALPHA)
    names = sorted(expected_deltas)
    assert_deltas(kohya_deltas(result.lora_files["kohya"], names), expected_deltas, "kohya")
    pipe = load_sdxl_pipeline(kit[0].diffusers, device="cpu", dtype=torch.float32)      # the base the run trained on
    assert_deltas(peft_deltas(pipe.unet, result.lora_files["peft"], names), expected_deltas, "peft")
    assert_deltas(diffusers_deltas(pipe, result.lora_files["diffusers"], names), expected_deltas, "diffusers")

    # and samples with the core's TLCM scheduler: an image that differs from the base model's
    from tlcm.scheduler import TLCMScheduler
    images = []
    for lora_path in (None, result.lora_files["kohya"]):
        pipe = load_sdxl_pipeline(kit[0].diffusers, device="cpu", dtype=torch.float32)
        if lora_path:
            merge_lora(pipe.unet, load_lora(lora_path))
        pipe.scheduler = TLCMScheduler.from_config(pipe.scheduler.config)
        images.append(pipe("a red cat", num_inference_steps=4, guidance_scale=0, height=64, width=64,
                           generator=torch.Generator().manual_seed(0), output_type="np").images[0])
    assert images[1].shape == (64, 64, 3) and images[1].std() > 0 and abs(images[1] - images[0]).max() > 1e-4


def test_signal_stop_then_resume_equals_uninterrupted_run(kit, tmp_path):
    straight = Trainer(tiny_config(kit, tmp_path / "a", "output.checkpoint_every=1", "output.keep_checkpoints=2"))
    full = straight.run()
    assert [p.name for p in sorted((tmp_path / "a" / "checkpoints").iterdir())] == \
        ["checkpoint-00000004", "checkpoint-00000005"]                      # keep-last-N

    interrupted = Trainer(tiny_config(kit, tmp_path / "b", "output.sample_every=2"))
    step = interrupted.train_step

    def step_then_sigint():
        loss = step()
        if interrupted.step == 2:
            os.kill(os.getpid(), signal.SIGINT)      # as Ctrl-C / a scheduler's SIGTERM would
        return loss
    interrupted.train_step = step_then_sigint
    first = interrupted.run()
    assert first.state == "stopped" and first.step == 2 and first.checkpoint.name == "checkpoint-00000002"
    assert (tmp_path / "b" / "lora" / "tlcm_lora_peft" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "b" / "status.json").read_text())["state"] == "stopped"
    assert (tmp_path / "b" / "samples" / "step-00000002.png").is_file()     # stopped on a sampling step

    resumed = Trainer(tiny_config(kit, tmp_path / "b", "output.sample_every=2"))
    rest = resumed.run(resume="latest")          # crosses the MLCD -> LCD switch
    assert rest.state == "finished" and rest.step == 5
    assert sorted(p.name for p in (tmp_path / "b" / "samples").iterdir()) == [
        "step-00000002.png", "step-00000004.png", "step-00000005.png"]
    assert first.losses + rest.losses == full.losses
    a, b = student_state_dict(straight.unet), student_state_dict(resumed.unet)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stages_3_4_train_their_parts_log_every_term_and_resume_exactly(kit, tmp_path):
    """MLCD → LCD → DM + GAN: the fake adapter and the heads are built, trained, checkpointed and restored."""
    stages = ("mlcd.steps=1", "lcd.steps=1", "dm.steps=3", "mps.weight=0", "dm.fake_rank=2", "dm.fake_updates=2",
              "dm.gan_teacher_steps=1", "output.checkpoint_every=3")
    straight = Trainer(tiny_config(kit, tmp_path / "a", *stages))
    assert sorted(straight.techniques) == ["dmd", "gan"]
    full = straight.run()
    logged = [json.loads(line) for line in (tmp_path / "a" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in row if k.startswith(("loss/", "dmd/", "gan/"))) for row in logged][2:] == [
        ["dmd/fake_loss", "gan/d_fake", "gan/d_loss", "gan/d_real", "loss/dm", "loss/dmd", "loss/gan"]] * 3

    interrupted = Trainer(tiny_config(kit, tmp_path / "b", *stages))
    step = interrupted.train_step

    def step_then_sigint():
        loss = step()
        if interrupted.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss
    interrupted.train_step = step_then_sigint
    assert interrupted.run().step == 3
    resumed = Trainer(tiny_config(kit, tmp_path / "b", *stages))
    rest = resumed.run(resume="latest")
    assert rest.step == 5 and rest.losses == full.losses[3:]
    a, b = student_state_dict(straight.unet), student_state_dict(resumed.unet)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("dmd", "gan"):
        wa, wb = straight.techniques[name].state_dict()["weights"], resumed.techniques[name].state_dict()["weights"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_missing_paths_fail_clearly(kit, tmp_path):
    with pytest.raises(FileNotFoundError, match="no SDXL model"):
        Trainer(tiny_config(kit, tmp_path, f"model.path={tmp_path / 'nope'}"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(PromptFileError, match="holds no prompts"):
        Trainer(tiny_config(kit, tmp_path, f"data.prompts=[{tmp_path / 'empty.txt'}]"))
    with pytest.raises(PromptFileError, match="not found"):
        Trainer(tiny_config(kit, tmp_path, f"data.prompts=[{tmp_path / 'missing.jsonl'}]"))
    with pytest.raises(ValueError, match="lora.target_modules.*not found"):
        Trainer(tiny_config(kit, tmp_path, "lora.target_modules=[no_such_layer]"))
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs bitsandbytes"):
            Trainer(tiny_config(kit, tmp_path, "train.optimizer=adamw8bit"))


def test_sample_grid_images_decode_one_at_a_time_like_a_batched_decode():
    """The grids decode image by image (bounded memory at 1024²); the pixels are those of one batched decode."""
    import numpy as np
    from tlcm.testing.tiny import tiny_vae
    from tlcm_train.samples import decode
    vae = tiny_vae()
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    images = decode(vae, latents, torch.device("cpu"))
    with torch.no_grad():
        batched = vae.decode(latents / vae.config.scaling_factor).sample
    expected = ((batched.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    got = np.stack([np.asarray(image, dtype=np.float64) for image in images])
    assert got.shape == (3, 64, 64, 3) and np.abs(got - expected).max() <= 1
    assert len({image.tobytes() for image in images}) == 3


def teacher_model(kit, folder, prediction_type: str, zero_snr: bool = True):
    """The kit's diffusers folder with a scheduler config of ``prediction_type``; with ``zero_snr`` the
    zero-terminal-SNR shape of NoobAI-XL v-pred's config."""
    import shutil
    paths, _ = kit
    shutil.copytree(paths.diffusers, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(prediction_type=prediction_type)
    if zero_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    config_file.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("zero_snr", [True, False], ids=["zero-snr", "sdxl-schedule"])
def test_v_prediction_teacher_distils_and_samples_with_its_own_schedule(kit, tmp_path, zero_snr):
    from diffusers import DDPMScheduler

    from tlcm.lora import BaseKind
    from tlcm.scheduler import TLCMScheduler
    model = teacher_model(kit, tmp_path / "vpred", "v_prediction", zero_snr)
    stages = ("mlcd.steps=2", "lcd.steps=1", "dm.steps=2", "mps.weight=0", "dm.fake_rank=2",
              "dm.gan_teacher_steps=1", "output.formats=[diffusers]")
    trainer = Trainer(tiny_config(kit, tmp_path / "out", f"model.path={model}", *stages))
    # the teacher's own schedule (zero SNR: diffusers' rescaled table, 0 at t = 999), predictions read as v
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              rescale_betas_zero_snr=zero_snr).alphas_cumprod
    torch.testing.assert_close(trainer.denoiser.alphas, reference.float(), rtol=0, atol=1e-6)
    assert trainer.denoiser.prediction_type == "v_prediction"
    assert (float(trainer.denoiser.alphas[999]) == 0.0) == zero_snr
    result = trainer.run()
    assert result.state == "finished" and len(result.losses) == 5
    assert all(torch.isfinite(torch.tensor(result.losses))), result.losses
    logged = [json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(v)) for row in logged for k, v in row.items()
               if k.startswith(("loss/", "dmd/", "gan/")))

    pipe = load_sdxl_pipeline(str(model), device="cpu", dtype=torch.float32)
    pipe.scheduler = TLCMScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.rescale_betas_zero_snr == zero_snr
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    exported = tmp_path / "out" / "lora" / "tlcm_lora_diffusers.safetensors"
    assert load_lora(exported).base == BaseKind("v_prediction", zero_terminal_snr=zero_snr)   # recorded for hosts
    pipe.load_lora_weights(str(exported))
    image = pipe(["a red cat"], num_inference_steps=2, guidance_scale=1.0, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert torch.isfinite(image).all() and image.abs().max() > 0


def test_epsilon_zero_snr_teacher_is_refused_in_one_line(kit, tmp_path):
    model = teacher_model(kit, tmp_path / "eps", "epsilon")
    with pytest.raises(ValueError, match="zero terminal SNR .* prediction_type 'epsilon'.*v-prediction"):
        Trainer(tiny_config(kit, tmp_path / "out", f"model.path={model}"))


def test_the_loop_reads_device_values_only_at_logging_steps(kit, tmp_path, monkeypatch):
    """Every host read of a tensor in the loop (``item``, ``float``, ``tolist``...) waits for the device to
    finish: they happen at the ``log_every`` steps (and the last), not at every step; the per-step losses
    still all reach the result and the log."""
    trainer = Trainer(tiny_config(kit, tmp_path / "out", "mlcd.steps=4", "lcd.steps=2", "output.log_every=3"))
    reads_at = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith(os.path.join("tlcm_train", "loop.py")):
                reads_at.append(trainer.step)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    result = trainer.run()
    monkeypatch.undo()
    assert result.step == 6 and len(result.losses) == 6
    assert set(reads_at) == {3, 6}, reads_at
    logged = [json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [3, 6]
    assert logged[1]["loss/lcd"] == pytest.approx(result.losses[-1], rel=1e-6)


def test_compiled_unet_trains_like_the_eager_one_and_exports_the_same_names(kit, tmp_path, monkeypatch):
    """``train.compile``: the UNet's forward runs through torch.compile for the student and its teacher passes
    (graph capture, adapter guards, autograd through the graphs), the steps match eager mode, and the LoRA
    keeps its parameter names. The test compiles with the ``aot_eager`` backend: the same capture without
    inductor's code generation, which takes minutes per graph on two CPU cores."""
    from torch._dynamo.utils import counters
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda module, **kw: compile_module(module, backend="aot_eager", **kw))
    runs = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        torch._dynamo.reset()
        counters.clear()
        trainer = Trainer(tiny_config(kit, tmp_path / name, "mlcd.steps=1", "lcd.steps=1", f"train.compile={flag}"))
        runs[name] = (trainer, trainer.run(), counters["stats"]["unique_graphs"])
    (eager, eager_result, eager_graphs), (compiled, compiled_result, compiled_graphs) = runs["eager"], runs["compiled"]
    assert eager_graphs == 0 and compiled_graphs >= 1             # the forward the steps call is the compiled one
    assert compiled_result.losses == pytest.approx(eager_result.losses, rel=1e-3)
    a, b = student_state_dict(eager.unet), student_state_dict(compiled.unet)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    exported = [load_lora(result.lora_files["peft"]).modules.keys() for result in (eager_result, compiled_result)]
    assert exported[0] == exported[1]
