"""The ``tlcm`` command end to end on the tiny kit: generate (English, Chinese, img2img), errors, demo."""
import pytest
import torch
from PIL import Image

from tlcm.cli import main
from tlcm.testing.build import build_tiny_sdxl


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("cli_kit"))


def png_params(path):
    return Image.open(path).text["parameters"]


def test_generate_from_folder_and_single_file(kit, tmp_path, capsys):
    common = ["--prompt", "a red circle", "--steps", "2", "--width", "64", "--height", "64", "--seed", "4"]
    assert main(["generate", "--model", str(kit.diffusers), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["generate", "--model", str(kit.checkpoint), "--out", str(tmp_path / "b"), *common]) == 0
    a, b = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert len(a) == len(b) == 1 and str(a[0]) in capsys.readouterr().out
    assert list(Image.open(a[0]).getdata()) == list(Image.open(b[0]).getdata())   # same weights, same image
    assert "Steps: 2, Sampler: TLCM, Schedule type: TLCM, CFG scale: 1, Seed: 4, Size: 64x64" in png_params(a[0])


def test_generate_with_lora_img2img_and_chinese(kit, tmp_path):
    from tlcm.lora import LoraFile, LoraModule, save_lora
    from tlcm.testing.chinese import tiny_chinese_kit
    lora = LoraFile({"mid_block.attentions.0.proj_in": LoraModule(torch.randn(2, 64), torch.randn(64, 2), 2.0)},
                    "kohya")
    lora_path = save_lora(lora, tmp_path / "tiny_lora.safetensors", "kohya")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(tmp_path / "init.png")
    text_model, adapter = tiny_chinese_kit(tmp_path / "zh")
    code = main(["generate", "--model", str(kit.diffusers), "--lora", f"{lora_path}:0.7", "--prompt", "蓝色的方块",
                 "--chinese-text-model", str(text_model), "--chinese-adapter", str(adapter),
                 "--init-image", str(tmp_path / "init.png"), "--strength", "0.5", "--steps", "4",
                 "--width", "64", "--height", "64", "--out", str(tmp_path / "out")])
    assert code == 0
    params = png_params(next((tmp_path / "out").glob("*.png")))
    assert "Lora tiny_lora: 0.7" in params and "Denoising strength: 0.5" in params


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
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "grid_2_4_8_steps.png").is_file()
    assert len(list((tmp_path / "images").glob("*.png"))) == 3 and str(tmp_path / "grid_2_4_8_steps.png") in out
