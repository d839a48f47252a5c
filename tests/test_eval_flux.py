"""`tlcm eval` on a FLUX.1 model: the TLCM-FLUX student and FLUX's own sampler, image for image against the
reference loops written out in ``reference_flux.py``, with transformer evaluations counted and the run
recorded as FLUX (no SDXL paper rows beside it)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from reference_flux import FLUX_LORA_ALPHA, FLUX_LORA_RANK, reference_image
from tlcm.cli import main
from tlcm.evaluation.prompts import load_coco_prompts

SIZE, LIMIT, SEED = 64, 2, 11


def _eval(capsys, *args):
    code = main(["eval", *map(str, args), "--device", "cpu", "--no-progress", "--width", str(SIZE),
                 "--height", str(SIZE)])
    out, err = capsys.readouterr()
    return code, out, err


def _images(out):
    images = []
    for i in range(LIMIT):
        with Image.open(out / "images" / f"{i:05d}.png") as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    return images


@pytest.mark.parametrize("spec, guidance, flags, evals", [
    ("tlcm:2", 7.0, [], 2),                         # the official TLCM-FLUX guidance by default
    ("tlcm:3", 4.5, ["--flux-guidance", "4.5"], 3),
    ("flux:4:2.5", 2.5, [], 4),                     # FLUX's own Euler sampler, the teacher row
])
def test_flux_eval_equals_the_reference_loop(flux_folder, official_flux_lora, tmp_path, capsys, one_thread,
                                             spec, guidance, flags, evals):
    folder, factors = official_flux_lora
    strength = 0.6
    out = tmp_path / "run"
    code, stdout, err = _eval(capsys, "--model", flux_folder, "--lora", f"{folder}:{strength}", "--sampler", spec,
                              "--limit", LIMIT, "--seed", SEED, "--out", out, *flags)
    assert code == 0, err
    prompts = load_coco_prompts()[:LIMIT]
    steps = int(spec.split(":")[1])
    sampler = "euler" if spec.startswith("flux") else "tlcm"
    for i, got in enumerate(_images(out)):
        want = reference_image(flux_folder, prompts[i], SEED + i, steps, SIZE, guidance=guidance, sampler=sampler,
                               lora=(factors, FLUX_LORA_ALPHA / FLUX_LORA_RANK, strength))
        assert np.abs(got - want).max() <= 1, i
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert result["model"]["family"] == "flux"
    assert result["sampler"]["guidance_embedding"] == guidance
    assert result["timing"]["median_unet_evals_per_image"] == evals and result["timing"]["unet_evals_total"] == evals * LIMIT
    table = (out / "table1.md").read_text(encoding="utf-8")
    assert "(paper)" not in table and "the paper's Table 1 is SDXL only" in table
    assert f"{evals} transformer evaluations per image" in table


def test_a_flux_run_resumes_only_with_the_same_guidance(flux_folder, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code, _, err = _eval(capsys, "--model", flux_folder, "--sampler", "tlcm:2", "--limit", 1, "--out", out)
    assert code == 0, err
    code, _, err = _eval(capsys, "--model", flux_folder, "--sampler", "tlcm:2", "--limit", 1, "--out", out,
                         "--flux-guidance", "5")
    assert code == 2 and "made by another run" in err


@pytest.mark.parametrize("spec, flags, message", [
    ("ddim:25:5", [], "an SDXL sampler; a FLUX model takes tlcm:N or flux:N:GUIDANCE"),
    ("lcm:4", [], "an SDXL sampler"),
    ("flux:4:3.5", ["--flux-guidance", "5"], "--flux-guidance applies to tlcm:N on a FLUX model"),
    ("tlcm:2", ["--flux-guidance", "0"], "--flux-guidance must be > 0"),
    ("flux:4:0", [], "the guidance embedding must be > 0"),
])
def test_what_a_flux_model_cannot_run_is_refused_before_loading(flux_folder, tmp_path, capsys, spec, flags, message):
    code, _, err = _eval(capsys, "--model", flux_folder, "--sampler", spec, "--limit", 1, "--out", tmp_path / "o",
                         *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spec, flags, message", [
    ("flux:4:3.5", [], "FLUX's own sampler needs a FLUX model"),
    ("tlcm:2", ["--flux-guidance", "5"], "--flux-guidance applies to tlcm:N on a FLUX model"),
])
def test_flux_settings_on_an_sdxl_model_are_refused(tmp_path, capsys, spec, flags, message):
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    code, _, err = _eval(capsys, "--model", sdxl, "--sampler", spec, "--limit", 1, "--out", tmp_path / "o", *flags)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
