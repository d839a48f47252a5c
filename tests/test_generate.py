"""Generation API: settings validation, seeds, img2img rule, PNG metadata, LoRA application."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from reference_tlcm import PARTIAL_DENOISE, README_TABLE, reference_loop, seeded_normal
from tlcm.generate import GenerationSettings, apply_loras, generate, save_images
from tlcm.lora import LoraMatchError

SIZE = 64


@pytest.fixture
def pipe(tiny_pipe):
    """A pipeline sharing the tiny weights; generate() may swap its scheduler freely."""
    return StableDiffusionXLPipeline(**tiny_pipe.components)


def settings(**kw):
    return GenerationSettings(**{"prompt": "a green triangle", "width": SIZE, "height": SIZE, **kw})


@pytest.mark.parametrize("kw,message", [
    (dict(steps=0), "steps"), (dict(steps=9), "steps"), (dict(steps=2.0), "steps"),
    (dict(width=100), "width"), (dict(height=0), "height"), (dict(batch_size=0), "batch_size"),
    (dict(negative_prompt="blurry"), "negative prompt"), (dict(eta=1.5), "eta"),
    (dict(strength=0.0), "strength"), (dict(schedule="karras"), "schedule"),
])
def test_bad_settings_are_rejected(kw, message):
    with pytest.raises(ValueError, match=message):
        settings(**kw).validate()


def visited(pipe, fn):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(int(a[1])))
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_batch_uses_seed_plus_index(pipe):
    batch = generate(pipe, settings(steps=2, seed=10, batch_size=2))
    single = generate(pipe, settings(steps=2, seed=11))
    assert len(batch) == 2 and batch[0].size == (SIZE, SIZE)
    # the same noise; a batched convolution may round differently from a single one (seen at 1 thread)
    assert np.abs(np.asarray(batch[1], np.int16) - np.asarray(single[0], np.int16)).max() <= 1
    assert np.abs(np.asarray(batch[0], np.int16) - np.asarray(batch[1], np.int16)).max() > 10


def reference_image(pipe, prompt, seed, timesteps):
    """The official loop (tests/reference_tlcm.py) on the pipeline's UNet, decoded by its VAE as an 8-bit image."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)
    noise = seeded_normal(seed, (1, 4, SIZE // 8, SIZE // 8))
    with torch.no_grad():
        latent = reference_loop(
            lambda z, t: pipe.unet(z, t, encoder_hidden_states=embeds,
                                   added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample,
            noise(), timesteps, eta=1.0, noise=noise)
        image = pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample
    return ((image[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def test_txt2img_and_img2img_timesteps(pipe):
    images = []
    assert visited(pipe, lambda: images.extend(generate(pipe, settings(steps=4, seed=4)))) == README_TABLE[4]
    # the image is the decoded last x̂0 of the official loop (not a latent re-noised after the last step)
    got = np.asarray(images[0]).astype(int)
    assert np.abs(got - reference_image(pipe, "a green triangle", 4, README_TABLE[4])).max() <= 1
    init = Image.new("RGB", (SIZE, SIZE), (10, 200, 10))
    # strength 0.45: 4/0.45 = 8.89 -> the 8-step tail; round(8.89) = 9 would give 444, 333, 222, 111
    assert visited(pipe, lambda: generate(pipe, settings(steps=4, strength=0.45), init_image=init)) == \
        PARTIAL_DENOISE[4, 0.45, "tlcm"] == [499, 374, 249, 124]
    assert visited(pipe, lambda: generate(pipe, settings(steps=2, guidance_scale=2.0, negative_prompt="red"))) == \
        [999, 499]


def test_precomputed_embeddings(pipe):
    cond, _, pooled, _ = pipe.encode_prompt("a green triangle", do_classifier_free_guidance=False)
    a = generate(pipe, settings(steps=2, seed=3), prompt_embeds=cond, pooled_prompt_embeds=pooled)
    b = generate(pipe, settings(steps=2, seed=3))
    assert list(a[0].getdata()) == list(b[0].getdata())
    with pytest.raises(ValueError, match="one prompt"):
        generate(pipe, settings(steps=2), prompt_embeds=cond.repeat(2, 1, 1), pooled_prompt_embeds=pooled)


def test_png_metadata_round_trip(pipe, tmp_path):
    s = settings(steps=3, seed=5, batch_size=2, loras=[("/x/tlcm_lora.safetensors", 0.8)], model="/m/sdxl.safetensors")
    paths = save_images(generate(pipe, s), tmp_path, s)
    assert [p.name for p in paths] == ["tlcm-00000-3steps-seed5.png", "tlcm-00001-3steps-seed6.png"]
    info = Image.open(paths[1]).text
    assert json.loads(info["tlcm"])["seed"] == 6 and json.loads(info["tlcm"])["steps"] == 3
    prompt, params = info["parameters"].split("\n")
    assert prompt == "a green triangle"
    assert params == ("Steps: 3, Sampler: TLCM, Schedule type: TLCM, CFG scale: 1, Seed: 5, Size: 64x64, "
                      "Model: sdxl, Lora tlcm_lora: 0.8")
    more = save_images(generate(pipe, settings(steps=1)), tmp_path, settings(steps=1))
    assert more[0].name == "tlcm-00002-1steps-seed0.png"      # never overwrites


def test_saved_images_take_a_fresh_index_and_the_umask(pipe, tmp_path):
    s = settings(steps=1, seed=2)
    image = generate(pipe, s)[0]
    (tmp_path / "tlcm-00007-1steps-seed2.png").write_bytes(b"the user's image")     # a gap: 0..6 were deleted
    previous = os.umask(0o027)
    try:
        [path] = save_images([image], tmp_path, s)
    finally:
        os.umask(previous)
    assert path.name == "tlcm-00008-1steps-seed2.png" and oct(path.stat().st_mode & 0o777) == "0o640"
    assert (tmp_path / "tlcm-00007-1steps-seed2.png").read_bytes() == b"the user's image"
    assert list(Image.open(path).getdata()) == list(image.getdata()) and not list(tmp_path.glob(".*"))


def test_apply_loras_merges_and_rejects_foreign_files(pipe, tmp_path):
    from safetensors.torch import save_file

    from tlcm.lora import LoraFile, LoraModule, save_lora
    unet = copy.deepcopy(pipe.unet)
    local = StableDiffusionXLPipeline(**{**pipe.components, "unet": unet})
    name = "down_blocks.1.attentions.0.proj_in"
    weight = dict(unet.named_modules())[name].weight
    down, up = torch.randn(4, weight.shape[1]), torch.randn(weight.shape[0], 4)
    lora = LoraFile(modules={name: LoraModule(down=down, up=up, alpha=2.0)}, source_format="kohya")
    path = save_lora(lora, tmp_path / "one.safetensors", "kohya")
    before = weight.detach().clone()
    reports = apply_loras(local, [(str(path), 0.5)])
    assert len(reports[0].matched) == 1
    torch.testing.assert_close(weight.detach() - before, 0.5 * (2.0 / 4) * up @ down, rtol=1e-4, atol=1e-5)
    foreign = "lora_unet_single_transformer_blocks_0_attn_to_q"      # a FLUX module name
    save_file({f"{foreign}.lora_down.weight": torch.ones(4, 8), f"{foreign}.lora_up.weight": torch.ones(8, 4)},
              str(tmp_path / "random.safetensors"))
    with pytest.raises(LoraMatchError, match="0"):
        apply_loras(local, [(str(tmp_path / "random.safetensors"), 1.0)])
