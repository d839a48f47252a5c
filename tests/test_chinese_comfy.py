"""Chinese text-encoder nodes inside real ComfyUI 0.30: in-process on the tiny kit checkpoint, and the example
workflow through the headless server. The harness writes the kit's Chinese files into the base directory
(``tlcm.testing.chinese.write_comfy_chinese_models``) and skips everything when ComfyUI cannot be obtained.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfy_harness import CHECKPOINT, CONTROLNET, comfy_base, comfy_nodes, comfy_server  # noqa: F401 (fixtures)
from tlcm.chinese import ChineseTextEncoder
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


def _ksample(comfy_nodes, model, positive, negative):
    latent = comfy_nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
    with torch.inference_mode():
        return comfy_nodes.KSampler().sample(model, 0, 2, 1.0, "tlcm", "tlcm", positive, negative,
                                             latent)[0]["samples"]


@pytest.fixture(scope="module")
def cat(comfy_nodes, checkpoint):
    """(positive, negative, KSampler latent) for a Chinese prompt, shared by the sampler and ControlNet tests."""
    positive, negative = _encode(comfy_nodes, "一只猫"), _encode(comfy_nodes, "")
    return positive, negative, _ksample(comfy_nodes, checkpoint[0], positive, negative)


def test_loader_lists_the_files_in_its_model_folders(comfy_nodes):
    schema = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMChineseTextEncoderLoader"].define_schema()
    assert [i.options for i in schema.inputs] == [[COMFY_TEXT_MODEL], [COMFY_ADAPTER]]


def test_encode_gives_sdxl_conditioning_equal_to_the_core(comfy_nodes, comfy_base):
    [[cond, meta]] = _encode(comfy_nodes, "一只猫在草地上")
    assert cond.shape == (1, 52, CROSS_ATTENTION_DIM) and meta["pooled_output"].shape == (1, TEXT_WIDTH_2)
    assert {k: meta[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == \
        dict(width=SIZE, height=SIZE, crop_w=0, crop_h=0, target_width=SIZE, target_height=SIZE)
    models = comfy_base / "models"
    core = ChineseTextEncoder.from_pretrained(models / "chinese_clip" / COMFY_TEXT_MODEL,
                                              models / "pea_adapters" / COMFY_ADAPTER)
    embeds, pooled = core.encode(["一只猫在草地上"])
    torch.testing.assert_close(cond, embeds)
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
    assert torch.isfinite(controlled).all() and not torch.allclose(plain, controlled)


def test_missing_files_say_where_to_put_what(comfy_nodes):
    loader = comfy_nodes.NODE_CLASS_MAPPINGS["TLCMChineseTextEncoderLoader"]
    with pytest.raises(FileNotFoundError, match=r"OFA-Sys/chinese-clip-vit-huge-patch14.*models/chinese_clip"):
        loader.execute("no-such-folder", COMFY_ADAPTER)
    with pytest.raises(FileNotFoundError, match=r"OPPOer/PEA-Diffusion.*models/pea_adapters"):
        loader.execute(COMFY_TEXT_MODEL, "no_such_adapter.bin")


def test_example_workflow_runs_in_the_server(comfy_server):
    prompt = json.loads(WORKFLOW_API.read_text(encoding="utf-8"))
    for node in prompt.values():   # shipped at SDXL's 1024 px; the kit runs it at 64 px to stay fast on CPU
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=SIZE, height=SIZE)
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [images] = [out["images"] for out in entry["outputs"].values() if "images" in out]
    assert images and images[0]["filename"].startswith("tlcm_chinese")
