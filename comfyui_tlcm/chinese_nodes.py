"""ComfyUI nodes for Chinese prompts: PEA-Diffusion adapter over a Chinese CLIP text tower -> SDXL CONDITIONING.

Files live in two model folders registered here (``folder_paths.add_model_folder_path``, so
``extra_model_paths.yaml`` entries work too): ``models/chinese_clip/<folder>/`` holds a transformers Chinese-CLIP
folder (HF ``OFA-Sys/chinese-clip-vit-huge-patch14``: config.json, pytorch_model.bin, vocab.txt) and
``models/pea_adapters/`` the adapter file (HF ``OPPOer/PEA-Diffusion`` ``pytorch_model.bin``; the example workflow
expects ``PEA-Diffusion/pytorch_model.bin`` there, any name works).
The encode node returns ComfyUI's SDXL conditioning layout (as ``CLIPTextEncodeSDXL``): cond (B, 52, 2048) (52 =
cn_clip's context length, see ``tlcm.chinese.encoder``) with ``pooled_output`` (B, 1280) and explicit size/crop
fields (SDXL's adm defaults them to 768 otherwise), so KSampler, SamplerCustom and ControlNet apply nodes take it
unchanged.
"""
from __future__ import annotations

import os

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..tlcm.chinese import ADAPTER_DOWNLOAD_HINT, CN_CLIP_CONTEXT_LENGTH, TEXT_MODEL_DOWNLOAD_HINT, ChineseTextEncoder

TEXT_MODEL_FOLDER = "chinese_clip"
ADAPTER_FOLDER = "pea_adapters"
ChineseEncoderType = io.Custom("TLCM_CHINESE_TEXT_ENCODER")
ENCODE_TOOLTIPS = {
    "encoder": "Chinese CLIP text tower + PEA adapter, from TLCM Chinese Text Encoder Loader.",
    "text": f"Chinese prompt. cn_clip reads at most {CN_CLIP_CONTEXT_LENGTH - 2} tokens (one per Chinese character); "
            "the rest is cut off. Used as the negative prompt it has no effect at CFG 1.",
    "width": "SDXL size conditioning: the size of the original image the model is told it is making. Use the "
             "output size in pixels (1024 for SDXL); smaller values ask for a low-resolution look.",
    "height": "SDXL size conditioning: original image height; normally the output height (1024 for SDXL).",
    "crop_w": "SDXL crop conditioning: how far from the left the model is told the image was cropped. 0 = "
              "uncropped, centred subjects; larger values tend to cut subjects at the left edge.",
    "crop_h": "SDXL crop conditioning: how far from the top the model is told the image was cropped. 0 = "
              "uncropped; larger values tend to cut subjects at the top edge.",
    "target_width": "SDXL target-size conditioning: normally the output width, the same as width.",
    "target_height": "SDXL target-size conditioning: normally the output height, the same as height.",
}

for _name in (TEXT_MODEL_FOLDER, ADAPTER_FOLDER):
    folder_paths.add_model_folder_path(_name, os.path.join(folder_paths.models_dir, _name))


def _text_model_folders() -> list[str]:
    """Sub-folders with a config.json under every registered ``chinese_clip`` path."""
    roots = [root for root in folder_paths.get_folder_paths(TEXT_MODEL_FOLDER) if os.path.isdir(root)]
    return sorted({entry.name for root in roots for entry in os.scandir(root)
                   if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "config.json"))})


def _text_model_path(name: str) -> str:
    for root in folder_paths.get_folder_paths(TEXT_MODEL_FOLDER):
        if os.path.isfile(os.path.join(root, name, "config.json")):
            return os.path.join(root, name)
    raise FileNotFoundError(f"No Chinese CLIP text model folder '{name}' in "
                            f"{folder_paths.get_folder_paths(TEXT_MODEL_FOLDER)}. {TEXT_MODEL_DOWNLOAD_HINT} "
                            f"and put it in models/{TEXT_MODEL_FOLDER}/<name>/.")


def _adapter_path(name: str) -> str:
    path = folder_paths.get_full_path(ADAPTER_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"No PEA adapter '{name}' in {folder_paths.get_folder_paths(ADAPTER_FOLDER)}. "
                                f"{ADAPTER_DOWNLOAD_HINT} and put it in models/{ADAPTER_FOLDER}/.")
    return path


class TLCMChineseTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLCMChineseTextEncoderLoader",
            display_name="TLCM Chinese Text Encoder Loader (PEA)",
            category="loaders/tlcm",
            description="Chinese CLIP text tower + PEA-Diffusion adapter, replacing SDXL's CLIP for Chinese prompts.",
            inputs=[
                io.Combo.Input("text_model", options=_text_model_folders(),
                               tooltip=f"Folder in models/{TEXT_MODEL_FOLDER}/: {TEXT_MODEL_DOWNLOAD_HINT}."),
                io.Combo.Input("adapter", options=folder_paths.get_filename_list(ADAPTER_FOLDER),
                               tooltip=f"File in models/{ADAPTER_FOLDER}/: {ADAPTER_DOWNLOAD_HINT}."),
            ],
            outputs=[ChineseEncoderType.Output()],
        )

    @classmethod
    def execute(cls, text_model: str, adapter: str) -> io.NodeOutput:
        device = comfy.model_management.text_encoder_device()
        dtype = torch.float32 if device.type == "cpu" else comfy.model_management.text_encoder_dtype(device)
        return io.NodeOutput(ChineseTextEncoder.from_pretrained(
            _text_model_path(text_model), _adapter_path(adapter), device=device, dtype=dtype))


class TLCMChineseTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        size = dict(min=0, max=16384)
        return io.Schema(
            node_id="TLCMChineseTextEncode",
            display_name="TLCM Chinese Text Encode (SDXL)",
            category="conditioning/tlcm",
            description="Encode a Chinese prompt into SDXL CONDITIONING (cross-attention tokens + pooled + sizes).",
            inputs=[
                ChineseEncoderType.Input("encoder", tooltip=ENCODE_TOOLTIPS["encoder"]),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip=ENCODE_TOOLTIPS["text"]),
                *(io.Int.Input(name, default=default, tooltip=ENCODE_TOOLTIPS[name], **size)
                  for name, default in (("width", 1024), ("height", 1024), ("crop_w", 0), ("crop_h", 0),
                                        ("target_width", 1024), ("target_height", 1024))),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, encoder: ChineseTextEncoder, text: str, width: int, height: int, crop_w: int, crop_h: int,
                target_width: int, target_height: int) -> io.NodeOutput:
        cond, pooled = encoder.encode([text])
        out = comfy.model_management.intermediate_device()
        meta = {"pooled_output": pooled.to(out, torch.float32), "width": width, "height": height,
                "crop_w": crop_w, "crop_h": crop_h, "target_width": target_width, "target_height": target_height}
        return io.NodeOutput([[cond.to(out, torch.float32), meta]])


NODES: list[type[io.ComfyNode]] = [TLCMChineseTextEncoderLoader, TLCMChineseTextEncode]
