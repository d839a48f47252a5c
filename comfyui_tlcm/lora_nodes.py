"""TLCM LoRA Loader (any TLCM LoRA format at the right scale, with a coverage report) and a kohya exporter.

The loader's coverage report goes three ways: the ``report`` STRING output (wire it to a Preview as Text
node to read it on the canvas), the node's UI output (``ui.PreviewText``: sent with the execution message and
kept in the prompt history, where front ends and API clients read it) and one console log entry per execution
(ComfyUI reruns a node only when its inputs change). A file that fits nothing, or a broken one, stops the
node with a one-line ``ValueError`` naming the file (see ``errors.user_errors``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..tlcm.lora import load_lora, save_lora
from .errors import user_errors
from .lora import apply_tlcm_lora

CATEGORY = "loaders/tlcm"
STRENGTH_TOOLTIP = ("Multiplier on the LoRA's own alpha/rank scale (the official file: 8/64, read from the file). "
                    "1 = the model TLCM was distilled to, 0 = LoRA off. Other values move away from the "
                    "distilled few-step model: expect softer or broken images at 2-8 steps.")

log = logging.getLogger(__name__)


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
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=STRENGTH_TOOLTIP),
                io.Clip.Input("clip", optional=True,
                              tooltip="Only needed for files that also carry text-encoder LoRA keys."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(),
                     io.String.Output(display_name="report",
                                      tooltip="Coverage report: format, modules patched, scale. Also the node's "
                                              "UI output and logged to the console.")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, clip=None) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        with user_errors(lora_name, path):
            applied = apply_tlcm_lora(model, clip, path, strength)
        log.info("TLCM LoRA Loader: %s", applied.report)
        return io.NodeOutput(applied.model, applied.clip, applied.report, ui=ui.PreviewText(applied.report))


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
        source = folder_paths.get_full_path_or_raise("loras", lora_name)
        with user_errors(lora_name, source):
            lora = load_lora(source)
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                        folder_paths.get_output_directory())
        path = save_lora(lora, Path(folder) / f"{name}_{counter:05}_.safetensors", "kohya")
        return io.NodeOutput(str(path), ui={"text": [f"{path} ({len(lora.modules)} modules)"]})
