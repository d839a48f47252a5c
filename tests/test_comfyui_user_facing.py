"""What a ComfyUI user meets, checked through real ComfyUI 0.30 (the shared headless server and in-process
folder registry): the files the example workflows select and the download links they carry, their layout,
the input tooltips, the message a LoRA that fits nothing gives, and the LoRA loader's coverage report.

The download-link format is the ComfyUI front end's (``properties.models`` entries ``{name, url, directory}``
with optional ``hash``/``hash_type``, schema ``zModelFile`` in Comfy-Org/ComfyUI_frontend
``src/platform/workflow/validation/schemas/workflowSchema.ts``): an entry counts only when its ``name`` is
one of the node's widget values (``getSelectedModelsMetadata``), is reported missing when no file of that
name is in the model folder ``directory``, and is offered for download only from Hugging Face or Civitai and
only for ``.safetensors``/``.sft`` names (``MissingModelsWarning.vue``).
"""
from __future__ import annotations

import itertools
import json
import re

from comfy_harness import REPO, comfy_base, comfy_nodes, comfy_server, on_tiny_kit  # noqa: F401 (fixtures)
from reference_tlcm import PARTIAL_DENOISE, README_TABLE

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib

EXAMPLES = REPO / "example_workflows"
UI_EXAMPLES = sorted(EXAMPLES.glob("*.json"))
WRONG_ARCH_LORA = "wrong_arch_sd15_kohya.safetensors"

# (node type, input) -> the folder its dropdown lists: a ComfyUI model folder, or "input" for images.
FILE_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("TLCMLoraLoader", "lora_name"): "loras",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("TLCMChineseTextEncoderLoader", "text_model"): "chinese_clip",
    ("TLCMChineseTextEncoderLoader", "adapter"): "pea_adapters",
    ("LoadImage", "image"): "input",
}
FOLDER_INPUTS = {("TLCMChineseTextEncoderLoader", "text_model")}   # a model folder, not one file
MODEL_FILE_KEYS = {"name", "url", "directory", "hash", "hash_type"}
DOWNLOAD_SOURCES = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")
FILE_LIKE = re.compile(r"\.(safetensors|sft|ckpt|pt|pth|bin|png|jpe?g|webp)$", re.IGNORECASE)
FIXTURE_WORDS = re.compile(r"tiny|test|fixture|kit", re.IGNORECASE)


def _readme_comfyui_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## ComfyUI\n")
    return text[start:text.index("\n## ", start + 1)]


def _examples() -> list[tuple[str, dict, dict]]:
    """(name, UI workflow, API twin) of every shipped example."""
    return [(p.stem, json.loads(p.read_text(encoding="utf-8")),
             json.loads((EXAMPLES / "api" / p.name).read_text(encoding="utf-8"))) for p in UI_EXAMPLES]


def _readme_path(folder: str, name: str, is_folder: bool) -> str:
    path = f"input/{name}" if folder == "input" else f"models/{folder}/{name}"
    return f"`{path}/`" if is_folder else f"`{path}`"


def _selected_files(api: dict):
    """(node id, node type, input, value, folder) for every file an example's nodes select."""
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if (node["class_type"], name) in FILE_INPUTS:
                yield node_id, node["class_type"], name, value, FILE_INPUTS[node["class_type"], name]


def test_examples_select_only_the_files_readme_says_to_download(comfy_nodes):
    import folder_paths
    readme = _readme_comfyui_section()
    for stem, ui, api in _examples():
        nodes = {str(n["id"]): n for n in ui["nodes"]}
        selected = list(_selected_files(api))
        assert any(t == "TLCMLoraLoader" for _, t, *_ in selected), stem
        for node_id, node_type, name, value, folder in selected:
            where = f"{stem} node {node_id} {node_type}.{name} = {value!r}"
            assert _readme_path(folder, value, (node_type, name) in FOLDER_INPUTS) in readme, where
            assert folder == "input" or folder in folder_paths.folder_names_and_paths, where
            assert value in nodes[node_id]["widgets_values"], where
        # No other file name hides in a widget, and no test-kit name anywhere.
        for node in api.values():
            for name, value in node["inputs"].items():
                if isinstance(value, str) and (node["class_type"], name) not in FILE_INPUTS:
                    assert not FILE_LIKE.search(value), f"{stem}: {node['class_type']}.{name} = {value!r}"
        for node in ui["nodes"]:
            for value in node.get("widgets_values") or []:
                if isinstance(value, str) and node["type"] not in ("Note", "MarkdownNote"):
                    assert not FIXTURE_WORDS.search(value), f"{stem}: {node['type']} widget {value!r}"


def _model_entries(ui: dict):
    for node in ui["nodes"]:
        for entry in node.get("properties", {}).get("models", []):
            yield node, entry


def test_examples_carry_download_links_for_every_model_file():
    readme = _readme_comfyui_section()
    offered = set()
    for stem, ui, api in _examples():
        nodes = {str(n["id"]): n for n in ui["nodes"]}
        for node_id, node_type, name, value, folder in _selected_files(api):
            if folder == "input" or (node_type, name) in FOLDER_INPUTS:
                continue   # the user's own image; a folder of three files (the front end checks single files)
            where = f"{stem} node {node_id} {node_type}.{name} = {value!r}"
            [entry] = [e for e in nodes[node_id]["properties"].get("models", []) if e.get("name") == value] or [None]
            assert entry is not None, f"{where}: no properties.models entry"
            assert set(entry) <= MODEL_FILE_KEYS and {"name", "url", "directory"} <= set(entry), where
            assert all(isinstance(entry[k], str) and entry[k] for k in ("name", "url", "directory")), where
            assert entry["directory"] == folder, where
            assert entry["url"].startswith("https://huggingface.co/") and entry["url"] in readme, where
            if folder in ("checkpoints", "loras", "controlnet"):   # the front end offers these for download
                assert entry["url"].startswith(DOWNLOAD_SOURCES) and value.endswith(DOWNLOAD_SUFFIXES), where
            offered.add((entry["directory"], entry["name"], entry["url"]))
        for node, entry in _model_entries(ui):   # entries naming no widget value are dead weight to the front end
            assert entry["name"] in node["widgets_values"], f"{stem}: {node['type']} {entry}"
    # The Comfy Registry metadata points at the same official LoRA download.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    for model in pyproject["tool"]["comfy"]["Models"]:
        assert any(model["location"] == f"/{d}/{n}" and model["model_url"] == u for d, n, u in offered), model


# LiteGraph draws a node's title bar above ``pos``; rows are 20 px per slot and ~24 px per widget; multiline
# text and image previews need more. A lower bound on what the front end computes, so sizes never undercut it.
TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT, MULTILINE_EXTRA, PREVIEW_EXTRA = 30, 20, 24, 60, 200
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _min_size(node: dict, info: dict) -> tuple[int, int]:
    if node["type"] in ("Note", "MarkdownNote"):
        return 200, 60
    spec = info[node["type"]]
    sockets = widgets = multiline = 0
    for section in ("required", "optional"):
        for name in spec["input_order"].get(section, []):
            kind, options = spec["input"][section][name][0], (spec["input"][section][name] + [{}])[1]
            if isinstance(kind, list) or kind in WIDGET_KINDS:
                widgets += 1 + bool(options.get("control_after_generate") or options.get("image_upload"))
                multiline += bool(options.get("multiline"))
            else:
                sockets += 1
    preview = PREVIEW_EXTRA if node["type"] in ("LoadImage", "SaveImage", "PreviewImage") else 0
    text_view = MULTILINE_EXTRA if node["type"] == "PreviewAny" else 0
    return 200, (SLOT_HEIGHT * max(sockets, len(spec["output"]), 1) + WIDGET_HEIGHT * widgets
                 + MULTILINE_EXTRA * multiline + preview + text_view)


def test_example_nodes_are_laid_out_without_overlap(comfy_server):
    info = comfy_server.get("/object_info")
    for stem, ui, _ in _examples():
        boxes = {}
        for node in ui["nodes"]:
            (x, y), (w, h) = node["pos"], node["size"]
            min_w, min_h = _min_size(node, info)
            assert w >= min_w and h >= min_h, f"{stem}: {node['type']} size {[w, h]} < {[min_w, min_h]}"
            boxes[f"{node['type']} {node['id']}"] = (x, y - TITLE_HEIGHT, x + w, y + h)
        for (a, (ax0, ay0, ax1, ay1)), (b, (bx0, by0, bx1, by1)) in itertools.combinations(boxes.items(), 2):
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{stem}: {a} overlaps {b}"


def test_inputs_say_what_their_ranges_mean(comfy_server):
    from tlcm.schedules import STEP_RANGE_TEXT
    info = comfy_server.get("/object_info")

    def tooltip(node: str, name: str) -> str:
        spec = info[node]["input"]
        return ({**spec.get("required", {}), **spec.get("optional", {})})[name][1].get("tooltip") or ""

    steps, denoise = tooltip("TLCMScheduler", "steps"), tooltip("TLCMScheduler", "denoise")
    assert STEP_RANGE_TEXT in steps and ", ".join(map(str, README_TABLE[4])) in steps
    assert "int(steps/denoise)" in denoise and ", ".join(map(str, PARTIAL_DENOISE[4, 0.5, "tlcm"])) in denoise
    strength = tooltip("TLCMLoraLoader", "strength")
    assert "alpha/rank" in strength and "1 =" in strength and "0 = LoRA off" in strength
    encode = info["TLCMChineseTextEncode"]["input_order"]["required"]
    assert encode == ["encoder", "text", "width", "height", "crop_w", "crop_h", "target_width", "target_height"]
    for name in encode:
        assert len(tooltip("TLCMChineseTextEncode", name)) > 40, name
    assert "50" in tooltip("TLCMChineseTextEncode", "text")   # cn_clip's token limit, the rest is cut
    for name in ("width", "height", "crop_w", "crop_h", "target_width", "target_height"):
        assert "SDXL" in tooltip("TLCMChineseTextEncode", name), name


def _load(stem: str) -> dict:
    return json.loads((EXAMPLES / "api" / f"{stem}.json").read_text(encoding="utf-8"))


def test_mismatched_lora_reaches_the_user_as_one_line_naming_the_file(comfy_server):
    prompt = on_tiny_kit(_load("tlcm_ksampler"))
    prompt["2"]["inputs"]["lora_name"] = WRONG_ARCH_LORA
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    failure = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    shown = f"{failure['exception_type']}: {failure['exception_message'].rstrip()}"   # ComfyUI appends "\n" + tips
    assert failure["node_type"] == "TLCMLoraLoader" and failure["exception_type"] == "ValueError"
    assert "\n" not in shown and shown.startswith(f"ValueError: {WRONG_ARCH_LORA}: 0 of 2 LoRA modules"), shown
    assert "LoraMatchError" not in shown and "tlcm.lora" not in shown and "custom_nodes" not in shown, shown
    assert "LoraMatchError" in comfy_server.log()   # the console keeps the core's error in the traceback


def test_lora_coverage_report_reaches_the_ui_output_and_the_console_once(comfy_server):
    prompt = on_tiny_kit(_load("tlcm_ksampler"))
    prompt["2"]["inputs"]["strength"] = 0.85   # no other test runs this strength: the loader executes here
    marker = "at strength 0.85"
    before = comfy_server.log().count(marker)
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [report] = entry["outputs"]["2"]["text"]                      # the loader's own UI output
    assert marker in report and "modules patched" in report and "TLCM targets covered" in report
    assert "scale alpha/rank 2" in report                        # the kit's official layout: alpha 8 / rank 4
    assert entry["outputs"]["11"]["text"] == [report]             # the example's Preview as Text on `report`
    assert comfy_server.log().count(marker) == before + 1
    again = comfy_server.run_prompt(prompt)                       # cached: the preview replays, no new log line
    assert again["status"]["status_str"] == "success" and again["outputs"]["11"]["text"] == [report]
    assert comfy_server.log().count(marker) == before + 1
