"""The ``tlcm`` command end to end on the tiny kit: generate (English, Chinese, img2img), errors, demo.

Each option is checked by what it does to the image or the conditioning, against an expectation computed
here by hand (a LoRA merged by hand, a VAE round trip, the PEA adapter formula on the raw weights).
"""
import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tlcm.cli import main
from tlcm.testing.build import build_tiny_sdxl
from tlcm.testing.tiny import CROSS_ATTENTION_DIM

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny matmuls, shared cores (a call 6 s -> 1.5 s)
SIZE = ["--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("cli_kit"))


def png_params(path):
    return Image.open(path).text["parameters"]


def generated(kit_model, out, *argv) -> np.ndarray:
    """``tlcm generate`` into a fresh folder; its one image as a float array (H, W, 3) in [0, 255]."""
    assert main(["generate", "--model", str(kit_model), "--out", str(out), *SIZE, *argv]) == 0
    [path] = out.glob("*.png")
    return np.asarray(Image.open(path), dtype=np.float64)


def test_generate_from_folder_and_single_file(kit, tmp_path, capsys):
    common = ["--prompt", "a red circle", "--steps", "2", *SIZE, "--seed", "4"]
    assert main(["generate", "--model", str(kit.diffusers), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["generate", "--model", str(kit.checkpoint), "--out", str(tmp_path / "b"), *common]) == 0
    a, b = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert len(a) == len(b) == 1 and str(a[0]) in capsys.readouterr().out
    assert list(Image.open(a[0]).getdata()) == list(Image.open(b[0]).getdata())   # same weights, same image
    assert "Steps: 2, Sampler: TLCM, Schedule type: TLCM, CFG scale: 1, Seed: 4, Size: 64x64" in png_params(a[0])


def test_generate_defaults_to_the_native_size_and_warns_far_from_it(kit, tmp_path, capsys):
    """The tiny kit's native size is 64² (UNet sample_size 8 x VAE downscale 8): that is the default, silently;
    a side over twice the native one gets a one-line warning (and is still generated)."""
    common = ["--prompt", "a red circle", "--steps", "1", "--seed", "4"]
    assert main(["generate", "--model", str(kit.diffusers), "--out", str(tmp_path / "native"), *common]) == 0
    [native] = (tmp_path / "native").glob("*.png")
    assert Image.open(native).size == (64, 64) and "Size: 64x64" in png_params(native)
    assert "warning" not in capsys.readouterr().err
    assert main(["generate", "--model", str(kit.diffusers), "--out", str(tmp_path / "wide"), *common,
                 "--width", "256"]) == 0
    [wide] = (tmp_path / "wide").glob("*.png")
    assert Image.open(wide).size == (256, 64)                     # an unset side stays native
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["tlcm: warning: 256x64 is far from this model's native size 64x64 (more than 2x on a "
                        "side): expect slow sampling and noisy or broken images"]


def test_size_warning_bounds():
    from tlcm.generate import size_warning
    assert size_warning(2048, 512, (1024, 1024)) is None          # 2x and 1/2 are still near
    assert size_warning(2056, 1024, (1024, 1024)) and size_warning(1024, 504, (1024, 1024))


REPO = Path(__file__).resolve().parents[1]
TORCHVISION_NOTICE = "requires torchvision (not installed)"


def test_commands_print_no_torchvision_fallback_notice(tmp_path):
    """transformers >= 5 without torchvision logs a fallback notice when diffusers' SDXL pipeline is imported
    (seen here by importing it alone); ``python -m tlcm kit build`` imports and saves one, and prints none."""
    run = dict(cwd=REPO, capture_output=True, text=True, timeout=300)
    done = subprocess.run([sys.executable, "-m", "tlcm", "kit", "build", str(tmp_path / "kit")], **run)
    assert done.returncode == 0, done.stderr
    assert TORCHVISION_NOTICE not in done.stdout + done.stderr
    import transformers
    if importlib.util.find_spec("torchvision") is None and int(transformers.__version__.split(".")[0]) >= 5:
        bare = subprocess.run([sys.executable, "-c", "from diffusers import StableDiffusionXLPipeline"], **run)
        assert TORCHVISION_NOTICE in bare.stderr                  # the check above is not vacuous here


def test_the_notice_filter_drops_only_that_notice():
    from tlcm.cli import TORCHVISION_FALLBACK_LOGGER, _DropTorchvisionFallbackNotice, silence_torchvision_fallback_notice
    silence_torchvision_fallback_notice()
    silence_torchvision_fallback_notice()                         # idempotent: one filter
    logger = logging.getLogger(TORCHVISION_FALLBACK_LOGGER)
    assert sum(isinstance(f, _DropTorchvisionFallbackNotice) for f in logger.filters) == 1

    def shown(message):
        return logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, (), None))
    assert not shown("`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
    assert shown("torchvision is not available - cannot save videos")
    assert shown("`Foo` requires the PIL library but it was not found")


LORA_TARGETS = ("down_blocks.1.attentions.0.proj_in", "up_blocks.1.attentions.2.proj_out")   # 64 -> 64 Linears
LORA_RANK, LORA_ALPHA, LORA_STRENGTH = 2, 1.0, 0.7      # alpha != rank: the scale alpha/r = 0.5 is not 1


def test_lora_changes_the_image_as_a_hand_merge_does(kit, tmp_path):
    """The LoRA image differs clearly from the plain one and equals the image of the UNet with
    W + strength·(alpha/r)·B·A added by hand (the strength ignored or the alpha/r scale dropped moves pixels by
    up to 18 or 71 grey levels)."""
    from tlcm.generate import GenerationSettings, generate
    from tlcm.lora import LoraFile, LoraModule, save_lora
    from tlcm.models import load_sdxl_pipeline
    g = torch.Generator().manual_seed(1)
    factors = {name: (torch.randn(LORA_RANK, 64, generator=g), torch.randn(64, LORA_RANK, generator=g))
               for name in LORA_TARGETS}                                    # (A = down, B = up)
    lora = LoraFile({n: LoraModule(a, b, LORA_ALPHA) for n, (a, b) in factors.items()}, "kohya")
    lora_path = save_lora(lora, tmp_path / "tiny_lora.safetensors", "kohya")
    common = ["--prompt", "a red circle", "--steps", "2", "--seed", "4"]
    plain = generated(kit.diffusers, tmp_path / "plain", *common)
    with_lora = generated(kit.diffusers, tmp_path / "lora", *common, "--lora", f"{lora_path}:{LORA_STRENGTH}")

    by_hand = load_sdxl_pipeline(kit.diffusers, device="cpu")
    with torch.no_grad():
        for name, (a, b) in factors.items():
            by_hand.unet.get_submodule(name).weight += LORA_STRENGTH * (LORA_ALPHA / LORA_RANK) * (b @ a)
    [image] = generate(by_hand, GenerationSettings(prompt="a red circle", steps=2, seed=4, width=64, height=64))
    expected = np.asarray(image, dtype=np.float64)
    assert np.abs(with_lora - plain).mean() > 3.0                 # measured 6.7 grey levels
    assert np.abs(with_lora - expected).max() <= 1.0              # fp32 summation order at most
    assert f"Lora tiny_lora: {LORA_STRENGTH}" in png_params(next((tmp_path / "lora").glob("*.png")))


def _deterministic_vae_model(kit, folder):
    """The kit with a VAE that behaves like SDXL's where img2img relies on it: the random tiny VAE's posterior
    std is ~1 (logvar ~0) and its scaled latents have std ~0.03, so a sampled init latent is mostly noise. Here
    logvar = -30 (the posterior is its mean) and the latent is 32x larger (post_quant_conv divides it back:
    decode(encode(x)) is unchanged), giving scaled latents of std ~1."""
    from diffusers import AutoencoderKL
    shutil.copytree(kit.diffusers, folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:] = 0
        vae.quant_conv.bias[c:] = -60.0
        vae.quant_conv.weight[:c] *= 32
        vae.quant_conv.bias[:c] *= 32
        vae.post_quant_conv.weight /= 32
    vae.save_pretrained(folder / "vae")
    return folder, vae


def _gradient(flip: bool) -> Image.Image:
    y, x = np.mgrid[0:64, 0:64] * 4
    channels = (255 - y, np.full_like(x, 40), x) if flip else (x, y, np.full_like(x, 200))
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8))


def test_img2img_starts_from_the_init_image(kit, tmp_path):
    """Two init images give clearly different outputs at strength 0.5; at strength 0.02 (one step at t = 19)
    the output is the VAE round trip of its init image, computed here with the VAE alone."""
    model, vae = _deterministic_vae_model(kit, tmp_path / "sdxl")
    inits = {}
    for name, flip in (("a", False), ("b", True)):
        _gradient(flip).save(tmp_path / f"{name}.png")
        x = torch.from_numpy(np.asarray(_gradient(flip), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        with torch.no_grad():
            decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
        inits[name] = ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()   # round trip, [0, 255]
    common = ["--prompt", "a red circle", "--seed", "4"]
    half = {name: generated(model, tmp_path / f"half_{name}", *common, "--init-image", str(tmp_path / f"{name}.png"),
                            "--strength", "0.5", "--steps", "4") for name in "ab"}
    assert np.abs(half["a"] - half["b"]).mean() > 10.0            # measured 28
    light = generated(model, tmp_path / "light", *common, "--init-image", str(tmp_path / "a.png"),
                      "--strength", "0.02", "--steps", "1")
    apart = np.abs(inits["a"] - inits["b"]).mean()                # 38 grey levels
    assert np.abs(light - inits["a"]).mean() < 0.4 * apart        # measured 9.3; full denoise gives 41
    assert np.abs(light - inits["b"]).mean() > 0.8 * apart
    params = png_params(next((tmp_path / "light").glob("*.png")))
    assert "Steps: 1," in params and "Denoising strength: 0.02" in params


def test_chinese_prompt_conditions_the_unet_through_the_adapter(kit, tmp_path, monkeypatch):
    """With the Chinese encoder the UNet is conditioned on the PEA adapter's output for the cn_clip token ids
    (written out here from the raw weights), not on the pipeline's CLIP encoders (77 tokens)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import ChineseCLIPModel
    from tlcm.testing.chinese import chinese_vocab, tiny_chinese_kit
    seen = []
    forward = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        seen.append((encoder_hidden_states.clone(), kwargs["added_cond_kwargs"]["text_embeds"].clone()))
        return forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)
    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    text_model, adapter = tiny_chinese_kit(tmp_path / "zh")
    prompt, common = "蓝色的方块", ["--steps", "2", "--seed", "4"]
    english = generated(kit.diffusers, tmp_path / "en", "--prompt", prompt, *common)
    en_tokens, en_pooled = seen[0]
    seen.clear()
    chinese = generated(kit.diffusers, tmp_path / "zh_out", "--prompt", prompt, *common,
                        "--chinese-text-model", str(text_model), "--chinese-adapter", str(adapter))
    assert len(seen) == 2 and en_tokens.shape == (1, 77, CROSS_ATTENTION_DIM)

    vocab = chinese_vocab()
    ids = [vocab.index("[CLS]"), *(vocab.index(c) for c in prompt), vocab.index("[SEP]")]
    ids = torch.tensor([ids + [0] * (52 - len(ids))])
    w = load_file(str(adapter))
    with torch.no_grad():
        h = ChineseCLIPModel.from_pretrained(text_model).text_model(input_ids=ids, attention_mask=ids.ne(0))
        x = F.layer_norm(h.last_hidden_state, (h.last_hidden_state.shape[-1],), w["layernorm.weight"],
                         w["layernorm.bias"])
        x = F.linear(F.gelu(F.linear(x, w["projector.0.weight"])), w["projector.2.weight"])
    for tokens, pooled in seen:                                   # every step, same conditioning
        torch.testing.assert_close(tokens, F.linear(F.gelu(x), w["fc.weight"], w["fc.bias"]))
        torch.testing.assert_close(pooled, x.mean(1))
    assert not torch.allclose(en_pooled, seen[0][1], atol=1e-3)
    assert np.abs(chinese - english).mean() > 0.3                # measured 1.2 grey levels


@pytest.mark.parametrize("argv,message", [
    (["--model", "/nonexistent/sdxl", "--prompt", "x"], "nonexistent"),
    (["--model", "/nonexistent/sdxl", "--prompt", "x", "--steps", "9"], "steps must be"),
    (["--model", "/nonexistent/sdxl", "--prompt", "x", "--negative-prompt", "y"], "negative prompt"),
])
def test_generate_errors_are_clear(argv, message, capsys):
    assert main(["generate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_chinese_needs_both_paths(kit, capsys):
    assert main(["generate", "--model", str(kit.diffusers), "--prompt", "猫", "--width", "64", "--height", "64",
                 "--chinese-adapter", "/x.safetensors"]) == 2
    assert "both --chinese-text-model and --chinese-adapter" in capsys.readouterr().err


def test_demo_writes_images_and_grid(tmp_path, capsys):
    """Three PNGs at 2, 4 and 8 steps (each different), and a grid whose tiles are exactly those images."""
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    grid_path = tmp_path / "grid_2_4_8_steps.png"
    assert grid_path.is_file() and str(grid_path) in out
    paths = sorted((tmp_path / "images").glob("*.png"))
    assert [png_params(p).split("Steps: ")[1].split(",")[0] for p in paths] == ["2", "4", "8"]
    images = [np.asarray(Image.open(p), dtype=np.float64) for p in paths]
    grid = np.asarray(Image.open(grid_path), dtype=np.float64)
    assert grid.shape == (64, 3 * 64, 3)
    for i, image in enumerate(images):
        assert np.array_equal(grid[:, 64 * i:64 * (i + 1)], image), f"grid tile {i}"
    assert min(np.abs(images[i] - images[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))) > 2.0   # measured 6.5
