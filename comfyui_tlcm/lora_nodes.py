"""TLCM LoRA Loader (any TLCM LoRA format at the right scale, with a coverage report) and a kohya exporter."""
from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..tlcm.lora import load_lora, save_lora
from .lora import apply_tlcm_lora

CATEGORY = "loaders/tlcm"


def _lora_input() -> io.Combo.Input:
    return io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                          tooltip="A TLCM LoRA in models/loras: official PEFT adapter, diffusers or kohya file.")


class TLCMLoraLoader(io.ComfyNode):
    """Loads TLCM LoRAs ComfyUI's stock loader misses (official PEFT: 0 modules) or over-scales (no alpha)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLCMLoraLoader",
            display_name="TLCM LoRA Loader",
            category=CATEGORY,
            description="Patch a model with a TLCM LoRA in PEFT, diffusers or kohya layout at its true alpha/rank "
                        "scale. Reports how many modules were patched; a LoRA that fits nothing is an error.",
            inputs=[
                io.Model.Input("model"),
                _lora_input(),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
                io.Clip.Input("clip", optional=True,
                              tooltip="Only needed for files that also carry text-encoder LoRA keys."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, clip=None) -> io.NodeOutput:
        applied = apply_tlcm_lora(model, clip, folder_paths.get_full_path_or_raise("loras", lora_name), strength)
        return io.NodeOutput(applied.model, applied.clip, applied.report)


class TLCMLoraSave(io.ComfyNode):
    """Writes a kohya copy (per-module ``.alpha``) that any kohya-capable host loads at the right scale."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLCMLoraSave",
            display_name="TLCM LoRA Convert/Save (kohya)",
            category=CATEGORY,
            description="Convert a TLCM LoRA to kohya keys with the correct alpha, saved under the output folder.",
            inputs=[_lora_input(), io.String.Input("filename_prefix", default="loras/tlcm_kohya")],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora_name: str, filename_prefix: str) -> io.NodeOutput:
        lora = load_lora(folder_paths.get_full_path_or_raise("loras", lora_name))
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                        folder_paths.get_output_directory())
        path = save_lora(lora, Path(folder) / f"{name}_{counter:05}_.safetensors", "kohya")
        return io.NodeOutput(str(path), ui={"text": [f"{path} ({len(lora.modules)} modules)"]})
