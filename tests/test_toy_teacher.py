"""The committed toy teacher: SDXL classes, loads through the kit's loader (folder and single file), samples,
follows the position prompt."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tlcm.schedules import uniform_timesteps
from tlcm_toy.bench_teacher import DEFAULT_TEACHER, load_teacher
from tlcm_toy.sample import ddim_trailing, sample


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(DEFAULT_TEACHER)


def test_committed_weights_fit_the_budget():
    weights = sum(p.stat().st_size for p in DEFAULT_TEACHER.parent.rglob("*.safetensors"))
    assert weights <= 20 * 2 ** 20


def test_teacher_has_sdxl_architecture(teacher):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    assert isinstance(teacher, StableDiffusionXLPipeline)
    assert isinstance(teacher.unet, UNet2DConditionModel) and teacher.unet.config.addition_embed_type == "text_time"
    assert type(teacher.text_encoder) is CLIPTextModel
    assert type(teacher.text_encoder_2) is CLIPTextModelWithProjection
    assert isinstance(teacher.vae, AutoencoderKL)
    assert teacher.tokenizer.vocab_size == teacher.tokenizer_2.vocab_size == 49408
    assert teacher.tokenizer("a red circle").input_ids == [49406, 320, 736, 7117, 49407]   # real CLIP BPE ids


def test_teacher_samples_follow_the_prompt_noise_and_schedule(teacher):
    prompts = ["a red solid square at the top left", "右下角的蓝色条纹圆形"]
    images = sample(teacher, prompts, steps=2, guidance=3.0, seed=0)
    assert images.shape == (2, 3, 32, 32) and np.isfinite(images).all()
    assert images.std() > 0.05                                        # not a blank canvas
    assert np.array_equal(images, sample(teacher, prompts, steps=2, guidance=3.0, seed=0))
    scheduler = ddim_trailing(teacher)
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == uniform_timesteps(2) == [999, 499]


def test_teacher_puts_the_shape_in_the_prompted_quadrant(teacher):
    """Position follows the prompt (docs/eval.md §7): every quadrant, two colours and textures, English and
    Chinese, from the same noise seed; the quadrant read off each image directly as the brightest one (the
    canvas is dark), not by the evaluator."""
    from tlcm_toy.data import POSITIONS, prompt
    cases = [(shape, colour, texture, position, language) for position in range(len(POSITIONS))
             for shape, colour, texture in ((0, 0, 0), (1, 2, 1)) for language in ("en", "zh")]
    images = sample(teacher, [prompt(*case) for case in cases], steps=8, guidance=3.0, seed=0)
    half = images.shape[-1] // 2
    quadrant_means = np.stack([images[:, :, :half, :half], images[:, :, :half, half:],
                               images[:, :, half:, :half], images[:, :, half:, half:]], axis=1).mean(axis=(2, 3, 4))
    hits = quadrant_means.argmax(axis=1) == np.array([case[3] for case in cases])
    assert hits.mean() >= 0.9, [prompt(*case) for case, hit in zip(cases, hits) if not hit]


def test_single_file_round_trip(teacher, tmp_path):
    from tlcm.models import load_sdxl_pipeline
    from tlcm.testing.single_file import save_sdxl_single_file
    checkpoint = save_sdxl_single_file(teacher, tmp_path / "toy_teacher.safetensors")
    shutil.copytree(DEFAULT_TEACHER, checkpoint.with_suffix(".config"),
                    ignore=shutil.ignore_patterns("*.safetensors", "training.json"))
    loaded = load_sdxl_pipeline(checkpoint, device="cpu", dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(teacher, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        for key, value in ours.items():
            torch.testing.assert_close(theirs[key], value, msg=f"{name}.{key}")


def test_tokenizers_of_a_read_only_teacher_go_to_a_cache(tmp_path, monkeypatch):
    import tlcm_toy.bench_teacher as bench_teacher
    teacher = tmp_path / "teacher"
    (teacher / "unet").mkdir(parents=True)
    (teacher / "unet" / "config.json").write_text("{}")
    (teacher / "model_index.json").write_text("{}")
    monkeypatch.setattr(bench_teacher, "writable", lambda folder: False)
    view = bench_teacher.ensure_tokenizers(teacher, cache=tmp_path / "cache")
    assert view.parent == tmp_path / "cache" and not (teacher / "tokenizer").exists()
    assert (view / "tokenizer" / "vocab.json").is_file() and (view / "tokenizer_2" / "vocab.json").is_file()
    assert (view / "unet").is_symlink() and (view / "unet" / "config.json").read_text() == "{}"
    assert bench_teacher.ensure_tokenizers(teacher, cache=tmp_path / "cache") == view      # reused
    monkeypatch.setattr(bench_teacher, "writable", lambda folder: True)
    assert bench_teacher.ensure_tokenizers(teacher) == teacher.resolve()
    assert (teacher / "tokenizer_2" / "vocab.json").is_file()
