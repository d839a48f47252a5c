"""``tlcm.models``: local SDXL loading from a diffusers folder or a single file, offline, with clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tlcm.models import auto_device_dtype, load_sdxl_pipeline
from tlcm.models.configs import SDXL_BASE_CONFIG, single_file_config
from tlcm.models.detect import BIGG_POSITIONS_KEY, CLIP_L_POSITIONS_KEY, UNET_IN_KEY, inspect_single_file
from tlcm.testing.build import build_tiny_sdxl

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores
PROMPT = dict(prompt="a photo of a cat", num_inference_steps=2, guidance_scale=0.0, height=64, width=64,
              output_type="pt")


@pytest.fixture(scope="module")
def kit(kit_dir):
    return build_tiny_sdxl(kit_dir / "kit-seed0", seed=0)   # shared with test_kit.py through the manifest


@pytest.fixture(scope="module")
def folder_pipe(kit):
    return load_sdxl_pipeline(kit.diffusers, device="cpu")


def _image(pipe, **extra) -> torch.Tensor:
    return pipe(**PROMPT, **extra, generator=torch.Generator().manual_seed(7)).images


def _header_only_checkpoint(path, unet_channels: int, clip_l: int, bigg: int):
    """A file with just the tensors the detector reads: enough to reach config resolution."""
    save_file({UNET_IN_KEY: torch.zeros(unet_channels, 4, 3, 3), CLIP_L_POSITIONS_KEY: torch.zeros(77, clip_l),
               BIGG_POSITIONS_KEY: torch.zeros(77, bigg)}, str(path))
    return path


def test_auto_device_dtype(monkeypatch):
    assert auto_device_dtype("cpu") == (torch.device("cpu"), torch.float32)
    assert auto_device_dtype("mps") == (torch.device("mps"), torch.float16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_device_dtype() == (torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_device_dtype("cuda:0") == (torch.device("cuda:0"), torch.float16)


def test_folder_load_is_bit_identical_to_the_in_memory_kit(folder_pipe, tiny_pipe):
    assert folder_pipe.unet.dtype == torch.float32 and folder_pipe.device.type == "cpu"
    image = _image(folder_pipe)
    assert image.shape == (1, 3, 64, 64) and image.std() > 0
    assert torch.equal(image, _image(tiny_pipe))


@pytest.mark.parametrize("stored, wanted", [(torch.float16, torch.float32), (torch.float32, torch.float16)])
def test_the_requested_dtype_is_what_loads(tiny_pipe, tmp_path, stored, wanted):
    """Weights stored in one dtype load in the one asked for, under whichever diffusers is installed (the
    keyword was renamed; an old release ignores the new name and leaves fp16 weights that fail on a CPU)."""
    import copy
    folder = tmp_path / "stored"
    copy.deepcopy(tiny_pipe).to(dtype=stored).save_pretrained(folder)
    pipe = load_sdxl_pipeline(folder, device="cpu", dtype=wanted)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(pipe, name).dtype == wanted, name


def test_single_file_and_folder_give_identical_images(kit, folder_pipe):
    """Needs the tiny text encoders to differ in width (tlcm.testing.tiny): diffusers' single-file loader tells
    them apart by width, and load_sdxl_pipeline refuses equally wide ones (test_bad_input_gives_a_clear_error)."""
    single = load_sdxl_pipeline(kit.checkpoint, device="cpu")   # configs found in <checkpoint>.config/
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(folder_pipe, name).state_dict(), getattr(single, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(_image(single), _image(folder_pipe))


def test_img2img_and_controlnet_share_the_loaded_weights(kit, folder_pipe, tmp_path):
    """img2img runs on the folder's weights and settings: with CFG and no negative prompt (where
    ``force_zeros_for_empty_prompt`` decides the unconditional branch) it gives exactly the image of diffusers'
    own img2img over the txt2img load's components, and that image depends on the init image. A ControlNet made
    from the UNet (zero output convolutions) adds nothing: the ControlNet pipeline reproduces txt2img."""
    from diffusers import (ControlNetModel, StableDiffusionXLControlNetPipeline,
                           StableDiffusionXLImg2ImgPipeline)
    img2img = load_sdxl_pipeline(kit.diffusers, device="cpu", pipeline="img2img")
    assert isinstance(img2img, StableDiffusionXLImg2ImgPipeline)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(folder_pipe, name).state_dict(), getattr(img2img, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    zeros = folder_pipe.config.force_zeros_for_empty_prompt
    reference = StableDiffusionXLImg2ImgPipeline(**folder_pipe.components, force_zeros_for_empty_prompt=zeros)
    inits = torch.rand(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    call = dict(PROMPT, guidance_scale=2.0, strength=0.5)         # no negative prompt: force_zeros decides
    out = [img2img(**call, image=init, generator=torch.Generator().manual_seed(0)).images for init in inits]
    expected = reference(**call, image=inits[0], generator=torch.Generator().manual_seed(0)).images
    assert out[0].shape == inits[0].shape
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)
    assert (out[0] - out[1]).abs().mean() > 1e-3

    ControlNetModel.from_unet(folder_pipe.unet).save_pretrained(tmp_path / "controlnet")
    control = load_sdxl_pipeline(kit.diffusers, device="cpu", controlnet=tmp_path / "controlnet")
    assert isinstance(control, StableDiffusionXLControlNetPipeline)
    assert torch.equal(control.controlnet.conv_in.weight, folder_pipe.unet.conv_in.weight)
    controlled = control(**PROMPT, image=inits[0], generator=torch.Generator().manual_seed(7)).images
    torch.testing.assert_close(controlled, _image(folder_pipe), rtol=0, atol=1e-6)


def test_bundled_sdxl_base_configs_are_complete(tmp_path):
    """The shipped configs plus generated tokenizers form a loadable SDXL base config folder."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer
    fake = _header_only_checkpoint(tmp_path / "sdxl.safetensors", 320, 768, 1280)
    with single_file_config(inspect_single_file(fake)) as folder:
        assert folder != SDXL_BASE_CONFIG
        unet = UNet2DConditionModel.load_config(folder, subfolder="unet")
        assert unet["cross_attention_dim"] == 768 + 1280 and unet["projection_class_embeddings_input_dim"] == 2816
        assert CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2").projection_dim == 1280
        assert CLIPTokenizer.from_pretrained(folder / "tokenizer").pad_token == "<|endoftext|>"
        assert CLIPTokenizer.from_pretrained(folder / "tokenizer_2").pad_token == "!"
    assert not folder.exists()


def test_sdxl_sized_file_without_weights_fails_clearly_offline(tmp_path):
    fake = _header_only_checkpoint(tmp_path / "sdxl.safetensors", 320, 768, 1280)
    with pytest.raises(ValueError, match="could not be converted"):
        load_sdxl_pipeline(fake, device="cpu")


def _file(name: str, content: bytes):
    def make(folder):
        (folder / name).write_bytes(content)
        return folder / name
    return make


def _sd15_folder(path):
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return path


@pytest.mark.parametrize("make, kwargs, error, match", [
    (lambda d: d / "missing.safetensors", {}, FileNotFoundError, "No SDXL model at .*missing.safetensors.*Download"),
    (lambda d: d, {}, ValueError, "no model_index.json"),
    (lambda d: _sd15_folder(d / "sd15"), {}, ValueError, "Stable Diffusion 1.x/2.x"),
    (_file("model.ckpt", b"x"), {}, ValueError, "pickle checkpoint"),
    (_file("notes.txt", b"x"), {}, ValueError, "is not a model"),
    (_file("bad.safetensors", b"garbage"), {}, ValueError, "not a readable .safetensors"),
    (lambda d: _header_only_checkpoint(d / "small.safetensors", 32, 16, 32), {}, ValueError,
     "not SDXL base's size.*small.config"),
    (lambda d: _header_only_checkpoint(d / "same.safetensors", 32, 32, 32), {}, ValueError,
     "cannot tell CLIP-L from OpenCLIP bigG"),
    (lambda d: _header_only_checkpoint(d / "small.safetensors", 32, 16, 32), {"config": "/nonexistent/cfg"},
     FileNotFoundError, "config /nonexistent/cfg does not exist"),
])
def test_bad_input_gives_a_clear_error(tmp_path, make, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_sdxl_pipeline(make(tmp_path), device="cpu", **kwargs)


@pytest.mark.parametrize("tensors, match", [
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
      "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 768)},
     "Stable Diffusion 1.x/2.x checkpoint"),
    ({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}, "is a LoRA"),
    ({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, "one diffusers component"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
      "conditioner.embedders.0.model.text_projection": torch.zeros(4, 4)}, "SDXL refiner"),
])
def test_non_sdxl_single_files_are_named(tmp_path, tensors, match):
    path = tmp_path / "other.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=match):
        load_sdxl_pipeline(path, device="cpu")


def test_wrong_pipeline_kind_and_config_for_a_folder(kit):
    with pytest.raises(ValueError, match="pipeline must be one of"):
        load_sdxl_pipeline(kit.diffusers, pipeline="inpaint")
    with pytest.raises(ValueError, match="config= only applies to single-file"):
        load_sdxl_pipeline(kit.diffusers, config=kit.config)


def test_sgm_writer_matches_diffusers_at_full_sdxl_base_size():
    """At SDXL base size (meta tensors, nothing allocated) the SGM names we write are the ones a real
    ``sd_xl_base_1.0.safetensors`` has: diffusers classifies them as SDXL base and converts them back
    onto exactly the bundled-config models' tensor names and shapes."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_open_clip_checkpoint,
                                                     infer_diffusers_model_type)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    from tlcm.testing.single_file import OPEN_CLIP_PREFIX, UNET_PREFIX, open_clip_to_sgm, unet_to_sgm
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_BASE_CONFIG, subfolder="unet"))
        bigg = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL_BASE_CONFIG, subfolder="text_encoder_2"))
    sgm = {**{UNET_PREFIX + k: v for k, v in unet_to_sgm(unet.state_dict(), unet.config).items()},
           **{OPEN_CLIP_PREFIX + k: v for k, v in open_clip_to_sgm(bigg.state_dict()).items()}}
    assert infer_diffusers_model_type(sgm) == "xl_base"
    for model, converted in ((unet, convert_ldm_unet_checkpoint(sgm, unet.config)),
                             (bigg, convert_open_clip_checkpoint(bigg, sgm, prefix=OPEN_CLIP_PREFIX))):
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected
