"""One headless ComfyUI server (127.0.0.1, random port): node listing, every example workflow, bad inputs.

The shipped API-format examples name real files (SDXL base, the official TLCM LoRA, an SDXL ControlNet,
1024² latents); here they run unchanged except for those file names and the latent size, which point at
the tiny kit (``comfy_harness.on_tiny_kit``).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_harness import (KIT_SIZE, OFFICIAL_LORA, REPO, PromptRejected,  # noqa: F401 (fixtures)
                           comfy_base, comfy_nodes, comfy_server, on_tiny_kit)

EXAMPLES = REPO / "example_workflows"
API_EXAMPLES = sorted((EXAMPLES / "api").glob("*.json"))
SDXL_EXAMPLES = [p for p in API_EXAMPLES if not p.stem.startswith("tlcm_flux")]   # FLUX: test_comfyui_flux.py
TLCM_NODES = ("TLCMSampler", "TLCMScheduler", "TLCMLoraLoader", "TLCMLoraSave")


def _load(name: str) -> dict:
    return json.loads((EXAMPLES / "api" / f"{name}.json").read_text(encoding="utf-8"))


def _combo_options(spec: list) -> list:
    """Dropdown values from /object_info: V1 ``[[...], {...}]`` or V3 ``["COMBO", {"options": [...]}]``."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def test_object_info_lists_nodes_and_tlcm_dropdowns(comfy_server):
    info = comfy_server.get("/object_info")
    for node_id in TLCM_NODES:
        assert node_id in info, f"{node_id} missing from /object_info (import error? see {comfy_server.log_path})"
        assert "tlcm" in info[node_id]["category"]
    for node_id, field in (("KSampler", "sampler_name"), ("KSampler", "scheduler"), ("KSamplerAdvanced", "sampler_name"),
                           ("KSamplerAdvanced", "scheduler"), ("KSamplerSelect", "sampler_name")):
        assert "tlcm" in _combo_options(info[node_id]["input"]["required"][field])
    steps = info["TLCMScheduler"]["input"]["required"]["steps"]
    assert (steps[1]["min"], steps[1]["max"]) == (1, 8)
    assert OFFICIAL_LORA in _combo_options(info["TLCMLoraLoader"]["input"]["required"]["lora_name"])


def _ui_to_api(ui: dict, info: dict) -> dict:
    """What the ComfyUI front end queues for a UI workflow: widget values by input name, links as [id, slot]."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        spec, widgets, inputs = info[node["type"]], list(node["widgets_values"]), {}
        for section in ("required", "optional"):
            for name in spec["input_order"].get(section, []):
                kind, options = spec["input"][section][name][0], (spec["input"][section][name] + [{}])[1]
                if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                    inputs[name] = widgets.pop(0)
                    widgets = widgets[1:] if options.get("control_after_generate") or options.get("image_upload") \
                        else widgets
        for slot in node["inputs"]:
            if slot["link"] is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_ui_examples_are_twins_of_the_api_examples(comfy_server):
    info = comfy_server.get("/object_info")
    for api_path in API_EXAMPLES:
        ui = json.loads((EXAMPLES / api_path.name).read_text(encoding="utf-8"))
        assert _ui_to_api(ui, info) == json.loads(api_path.read_text(encoding="utf-8")), api_path.name


def _run_image(server, base, prompt: dict) -> np.ndarray:
    """Run ``prompt``; its one saved image (checked 64x64 and in the output folder) as float (H, W, 3)."""
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert len(images) == 1 and images[0]["type"] == "output"
    with Image.open(Path(base) / "output" / images[0]["subfolder"] / images[0]["filename"]) as image:
        assert image.size == (KIT_SIZE, KIT_SIZE)
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def _without_lora(prompt: dict) -> dict:
    prompt = copy.deepcopy(prompt)
    prompt[_node_id(prompt, "TLCMLoraLoader")]["inputs"]["strength"] = 0.0
    return prompt


# What each example must change against the plain KSampler example (same checkpoint, LoRA, seed, 4 TLCM steps):
# the ControlNet hint, the img2img source at denoise 0.5, the Chinese conditioning; SamplerCustomAdvanced with
# TLCMSampler + TLCMScheduler must give the KSampler image exactly (the same sampler through the other node path).
# Measured mean differences in grey levels: controlnet 19, img2img 45, chinese 9.5; without the LoRA 24-31.
DIFFERS_FROM_KSAMPLER = {"tlcm_controlnet": 5.0, "tlcm_img2img": 10.0, "tlcm_chinese_prompt": 3.0}


@pytest.mark.parametrize("example", [p.stem for p in SDXL_EXAMPLES])
def test_example_workflow_saves_an_image(comfy_server, comfy_base, example):
    prompt = on_tiny_kit(_load(example))
    image = _run_image(comfy_server, comfy_base, prompt)
    assert image.std() > 5.0                                      # not a blank/NaN image
    plain = _run_image(comfy_server, comfy_base, _without_lora(prompt))
    assert np.abs(image - plain).mean() > 5.0, "the TLCM LoRA did not change the image"
    if example == "tlcm_ksampler":
        return
    ksampler = _run_image(comfy_server, comfy_base, on_tiny_kit(_load("tlcm_ksampler")))
    if example == "tlcm_sampler_custom_advanced":
        assert np.array_equal(image, ksampler)
    else:
        assert np.abs(image - ksampler).mean() > DIFFERS_FROM_KSAMPLER[example]


def _node_id(prompt: dict, class_type: str) -> str:
    return next(k for k, n in prompt.items() if n["class_type"] == class_type)


def test_invalid_inputs_give_errors_and_the_server_survives(comfy_server):
    prompt = on_tiny_kit(_load("tlcm_sampler_custom_advanced"))
    scheduler, loader = _node_id(prompt, "TLCMScheduler"), _node_id(prompt, "TLCMLoraLoader")

    too_many = copy.deepcopy(prompt)
    too_many[scheduler]["inputs"]["steps"] = 9
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.run_prompt(too_many)
    errors = rejected.value.body["node_errors"][scheduler]["errors"]
    assert rejected.value.status == 400 and errors[0]["type"] == "value_bigger_than_max"

    unknown = copy.deepcopy(prompt)
    unknown[loader]["inputs"]["lora_name"] = "no_such_lora.safetensors"
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.run_prompt(unknown)
    assert rejected.value.body["node_errors"][loader]["errors"][0]["type"] == "value_not_in_list"

    wrong = copy.deepcopy(prompt)
    wrong[loader]["inputs"]["lora_name"] = "wrong_arch_sd15_kohya.safetensors"
    entry = comfy_server.run_prompt(wrong)
    assert entry["status"]["status_str"] == "error"
    failure = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert failure["node_type"] == "TLCMLoraLoader"
    assert "0 of 2 LoRA modules" in failure["exception_message"]

    assert comfy_server.process.poll() is None
    assert comfy_server.run_prompt(prompt)["status"]["status_str"] == "success"
