"""``tlcm generate`` on a FLUX.1 folder: the official TLCM-FLUX loop with the official LoRA layout.

The reference is written out here on a second, independently loaded copy of the tiny FLUX folder: the LoRA
merged by hand (W += strength · alpha/r · B·A on every target), the start latents and each step's fresh
noise drawn from one generator seeded with the image's seed, the sigmas of FLUX's shift by formula, then
diffusers' own unpack and VAE decode.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lora_exports import write_official_peft
from tlcm.cli import main
from tlcm.lora import TLCM_FLUX_TARGET_SUFFIXES

RANK, ALPHA, STRENGTH = 4, 3.0, 0.8
PROMPT, SEED, STEPS, SIZE = "a red cat", 3, 2, 64


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from tlcm.testing.tiny_flux import tiny_flux_pipeline
    root = tmp_path_factory.mktemp("flux_generate")
    tiny_flux_pipeline(root / "cache", seed=0).save_pretrained(root / "tiny-flux")
    return root / "tiny-flux"


def flux_targets(transformer) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
            and any(name == s or name.endswith("." + s) for s in TLCM_FLUX_TARGET_SUFFIXES)}


@pytest.fixture(scope="module")
def official_lora(flux_folder, tmp_path_factory):
    """The official TLCM-FLUX layout: PEFT keys ``base_model.model.<path>.lora_A/B.weight``, r and lora_alpha
    in adapter_config.json; random non-zero factors on every target of the tiny transformer."""
    from diffusers import FluxTransformer2DModel
    transformer = FluxTransformer2DModel.from_pretrained(flux_folder / "transformer")
    g = torch.Generator().manual_seed(4)
    factors = {name: (0.2 * torch.randn(RANK, m.in_features, generator=g),
                      0.2 * torch.randn(m.out_features, RANK, generator=g))
               for name, m in flux_targets(transformer).items()}
    folder = write_official_peft(tmp_path_factory.mktemp("flux_lora") / "TLCMFlux", factors, RANK, ALPHA,
                                 TLCM_FLUX_TARGET_SUFFIXES)
    return folder, factors


def reference_image(flux_folder, factors, seed: int) -> np.ndarray:
    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(flux_folder, local_files_only=True)
    with torch.no_grad():
        for name, module in flux_targets(pipe.transformer).items():
            a, b = factors[name]
            module.weight += STRENGTH * (ALPHA / RANK) * (b @ a)
    tokens = (SIZE // 16) ** 2
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)            # FLUX.1-dev's shift at this size
    sigmas = [math.exp(mu) / (math.exp(mu) + 1 / s - 1) for s in np.linspace(1.0, 1 / STEPS, STEPS)] + [0.0]
    generator = torch.Generator().manual_seed(seed)
    channels = pipe.transformer.config.in_channels // 4
    side = 2 * (SIZE // (pipe.vae_scale_factor * 2))
    latents = pipe._pack_latents(torch.randn(1, channels, side, side, generator=generator), 1, channels, side, side)
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, prompt_2=None)
    image_ids = pipe._prepare_latent_image_ids(1, side // 2, side // 2, "cpu", torch.float32)
    x = latents
    with torch.no_grad():
        for i in range(STEPS):
            v = pipe.transformer(hidden_states=x, timestep=torch.tensor([sigmas[i]]), guidance=torch.tensor([7.0]),
                                 pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                 img_ids=image_ids, return_dict=False)[0]
            x0 = x - sigmas[i] * v
            x = x0 if sigmas[i + 1] == 0 else (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * torch.randn(
                x0.shape, generator=generator)
        z = pipe._unpack_latents(x, SIZE, SIZE, pipe.vae_scale_factor)
        z = z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(z, return_dict=False)[0]
    return np.asarray(pipe.image_processor.postprocess(image, output_type="pil")[0], dtype=np.int16)


def test_generate_on_flux_equals_the_official_loop_with_the_lora(flux_folder, official_lora, tmp_path, capsys,
                                                                   one_thread):
    folder, factors = official_lora
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
        assert np.abs(got - reference_image(flux_folder, factors, SEED + i)).max() <= 1, path.name


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
