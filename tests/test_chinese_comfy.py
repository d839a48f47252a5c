"""Chinese text-encoder nodes inside real ComfyUI 0.30: in-process on the tiny kit checkpoint, and the example
workflow through the headless server. The harness writes the kit's Chinese files into the base directory
(``tlcm.testing.chinese.write_comfy_chinese_models``) and skips everything when ComfyUI cannot be obtained.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfy_harness import (CHECKPOINT, CONTROLNET, comfy_base, comfy_nodes, comfy_server,  # noqa: F401 (fixtures)
                           on_tiny_kit)
from tlcm.testing.chinese import COMFY_ADAPTER, COMFY_TEXT_MODEL
from tlcm.testing.tiny import CROSS_ATTENTION_DIM, TEXT_WIDTH_2

SIZE = 64
WORKFLOW_API = Path(__file__).resolve().parents[1] / "example_workflows" / "api" / "tlcm_chinese_prompt.json"


def _encode(comfy_nodes, text):
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMChineseTextEncoderLoader"]
    encode = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMChineseTextEncode"]
    with torch.inference_mode():
        encoder = loader.execute(COMFY_TEXT_MODEL, COMFY_ADAPTER)[0]
        return encode.execute(encoder, text, SIZE, SIZE, 0, 0, SIZE, SIZE)[0]


@pytest.fixture(scope="module")
def checkpoint(comfy_nodes):
    with torch.inference_mode():
        return comfy_nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINT)[:3]


def _ksample(comfy_nodes, model, positive, negative, steps=2):
    latent = comfy_nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
    with torch.inference_mode():
        return comfy_nodes.KSampler().sample(model, 0, steps, 1.0, "tlcm", "tlcm", positive, negative,
                                             latent)[0]["samples"]


@pytest.fixture(scope="module")
def cat(comfy_nodes, checkpoint):
    """(positive, negative, KSampler latent) for a Chinese prompt, shared by the sampler and ControlNet tests."""
    positive, negative = _encode(comfy_nodes, "一只猫"), _encode(comfy_nodes, "")
    return positive, negative, _ksample(comfy_nodes, checkpoint[0], positive, negative)


def test_loader_lists_the_files_in_its_model_folders(comfy_nodes):
    schema = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMChineseTextEncoderLoader"].define_schema()
    assert [i.options for i in schema.inputs] == [[COMFY_TEXT_MODEL], [COMFY_ADAPTER]]


def _conditioning_by_hand(comfy_base, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """PEA's formula on the raw files: cn_clip ids ([CLS] one id per character [SEP], [PAD] = 0 to 52), the
    text tower's last states, then fc(GELU(x)) and mean(x) with x = projector(LayerNorm(h))."""
    import torch.nn.functional as F
    from transformers import ChineseCLIPModel
    from tlcm.testing.chinese import chinese_vocab
    models = comfy_base / "models"
    vocab = chinese_vocab()
    ids = [vocab.index("[CLS]"), *(vocab.index(c) for c in text), vocab.index("[SEP]")]
    ids = torch.tensor([ids + [0] * (52 - len(ids))])
    w = torch.load(models / "pea_adapters" / COMFY_ADAPTER, weights_only=True)   # pickled like the HF release
    with torch.no_grad():
        h = ChineseCLIPModel.from_pretrained(models / "chinese_clip" / COMFY_TEXT_MODEL).text_model(
            input_ids=ids, attention_mask=ids.ne(0)).last_hidden_state
        x = F.layer_norm(h, (h.shape[-1],), w["layernorm.weight"], w["layernorm.bias"])
        x = F.linear(F.gelu(F.linear(x, w["projector.0.weight"])), w["projector.2.weight"])
        return F.linear(F.gelu(x), w["fc.weight"], w["fc.bias"]), x.mean(1)


def test_encode_gives_sdxl_conditioning_by_the_pea_formula(comfy_nodes, comfy_base):
    [[cond, meta]] = _encode(comfy_nodes, "一只猫在草地上")
    assert cond.shape == (1, 52, CROSS_ATTENTION_DIM) and meta["pooled_output"].shape == (1, TEXT_WIDTH_2)
    assert {k: meta[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == \
        dict(width=SIZE, height=SIZE, crop_w=0, crop_h=0, target_width=SIZE, target_height=SIZE)
    tokens, pooled = _conditioning_by_hand(comfy_base, "一只猫在草地上")
    torch.testing.assert_close(cond, tokens)
    torch.testing.assert_close(meta["pooled_output"], pooled)


def test_ksampler_takes_the_conditioning_and_the_prompt_matters(comfy_nodes, checkpoint, cat):
    _, negative, cat_latent = cat
    hills = _ksample(comfy_nodes, checkpoint[0], _encode(comfy_nodes, "山水画"), negative)
    assert torch.isfinite(cat_latent).all() and not torch.allclose(cat_latent, hills)


def test_controlnet_apply_takes_the_conditioning(comfy_nodes, checkpoint, cat):
    (model, _, vae), (positive, negative, plain) = checkpoint, cat
    hint = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        control = comfy_nodes.ControlNetLoader().load_controlnet(CONTROLNET)[0]
        pos_c, neg_c = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, control, hint, 1.0, 0.0, 1.0, vae=vae)
    assert pos_c[0][1]["control"] is not None and pos_c[0][1]["pooled_output"] is positive[0][1]["pooled_output"]
    controlled = _ksample(comfy_nodes, model, pos_c, neg_c)
    assert torch.isfinite(controlled).all() and (plain - controlled).abs().mean() > 0.03 * plain.abs().mean()  # 0.12


def test_missing_files_say_where_to_put_what(comfy_nodes):
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMChineseTextEncoderLoader"]
    with pytest.raises(FileNotFoundError, match=r"OFA-Sys/chinese-clip-vit-huge-patch14.*models/chinese_clip"):
        loader.execute("no-such-folder", COMFY_ADAPTER)
    with pytest.raises(FileNotFoundError, match=r"OPPOer/PEA-Diffusion.*models/pea_adapters"):
        loader.execute(COMFY_TEXT_MODEL, "no_such_adapter.bin")


def test_example_workflow_runs_in_the_server(comfy_server, comfy_base, comfy_nodes, checkpoint):
    """The served example saves the image the same graph gives node by node in-process: Chinese conditioning
    (at the workflow's 1024 px size conditioning), the TLCM LoRA on the model, 4 TLCM steps, VAE decode."""
    import numpy as np
    from PIL import Image
    shipped = json.loads(WORKFLOW_API.read_text(encoding="utf-8"))
    assert shipped["3"]["inputs"] == {"text_model": COMFY_TEXT_MODEL, "adapter": COMFY_ADAPTER}   # as shipped
    prompt = on_tiny_kit(shipped)   # SDXL base and the official LoRA -> the kit's; 1024 px -> 64 px on CPU
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [images] = [out["images"] for out in entry["outputs"].values() if "images" in out]
    assert len(images) == 1 and images[0]["subfolder"] == "tlcm" and images[0]["filename"].startswith("chinese_prompt")
    with Image.open(Path(comfy_base) / "output" / images[0]["subfolder"] / images[0]["filename"]) as image:
        served = np.asarray(image.convert("RGB"), dtype=np.float64)

    model, _, vae = checkpoint
    nodes = comfy_nodes.NODE_CLASS_MAPPINGS
    text, lora, sampler = prompt["4"]["inputs"], prompt["2"]["inputs"], prompt["7"]["inputs"]
    with torch.inference_mode():
        encoder = nodes["TLCMChineseTextEncoderLoader"].execute(COMFY_TEXT_MODEL, COMFY_ADAPTER)[0]
        size = [text[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")]
        positive = nodes["TLCMChineseTextEncode"].execute(encoder, text["text"], *size)[0]
        negative = nodes["TLCMChineseTextEncode"].execute(encoder, "", *size)[0]
        patched = nodes["TLCMLoraLoader"].execute(model, lora["lora_name"], lora["strength"])[0]
        latent = comfy_nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
        samples = comfy_nodes.KSampler().sample(patched, sampler["seed"], sampler["steps"], sampler["cfg"], "tlcm",
                                                "tlcm", positive, negative, latent)[0]
        pixels = comfy_nodes.VAEDecode().decode(vae, samples)[0][0].numpy()
    expected = np.clip(255.0 * pixels, 0, 255).astype(np.uint8).astype(np.float64)   # as SaveImage writes it
    assert np.abs(served - expected).max() <= 1.0
    with torch.inference_mode():
        plain = comfy_nodes.VAEDecode().decode(vae, {"samples": _ksample(comfy_nodes, model, positive, negative,
                                                                         steps=4)})[0][0].numpy()
    assert np.abs(served - 255.0 * plain).mean() > 5.0           # and the LoRA is what made it (measured 31)
