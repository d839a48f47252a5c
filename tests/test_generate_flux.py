"""``tlcm generate`` on a FLUX.1 folder: the official TLCM-FLUX loop with the official LoRA layout, against the
reference loop written out in ``reference_flux.py``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from reference_flux import FLUX_LORA_ALPHA, FLUX_LORA_RANK, reference_image
from tlcm.cli import main

STRENGTH = 0.8
PROMPT, SEED, STEPS, SIZE = "a red cat", 3, 2, 64


def test_generate_on_flux_equals_the_official_loop_with_the_lora(flux_folder, official_flux_lora, tmp_path, capsys,
                                                                   one_thread):
    folder, factors = official_flux_lora
    code = main(["generate", "--model", str(flux_folder), "--lora", f"{folder}:{STRENGTH}", "--prompt", PROMPT,
                 "--steps", str(STEPS), "--seed", str(SEED), "--batch", "2", "--width", str(SIZE),
                 "--height", str(SIZE), "--device", "cpu", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    n = len(factors)
    assert f"{n}/{n} LoRA modules matched; TLCM targets covered {n}/{n}" in out
    paths = sorted((tmp_path / "out").glob("*.png"))
    assert len(paths) == 2
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE) and "Distilled CFG Scale: 7" in image.text["parameters"]
            got = np.asarray(image.convert("RGB"), dtype=np.int16)
        want = reference_image(flux_folder, PROMPT, SEED + i, STEPS, SIZE,
                               lora=(factors, FLUX_LORA_ALPHA / FLUX_LORA_RANK, STRENGTH))
        assert np.abs(got - want).max() <= 1, path.name


@pytest.mark.parametrize("flag, value, message", [
    ("--cfg", "3", "FLUX has no CFG"), ("--eta", "0.5", "eta 1"), ("--init-image", "x.png", "not available for FLUX"),
])
def test_what_flux_cannot_do_is_refused_in_one_line(flux_folder, tmp_path, capsys, flag, value, message):
    code = main(["generate", "--model", str(flux_folder), "--prompt", PROMPT, "--width", str(SIZE), "--height",
                 str(SIZE), "--device", "cpu", "--out", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_flux_guidance_on_an_sdxl_model_is_refused(tmp_path, capsys):
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    code = main(["generate", "--model", str(sdxl), "--prompt", PROMPT, "--flux-guidance", "5",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "--flux-guidance applies to FLUX models" in capsys.readouterr().err
