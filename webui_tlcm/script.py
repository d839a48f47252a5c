"""The always-visible "TLCM" accordion (txt2img and img2img): the TLCM-mode switch and the LoRA helper.

Only imported inside the WebUI (``scripts/tlcm_webui.py``): it subclasses ``modules.scripts.Script``
(A1111 1.10 ``modules/scripts.py``) and builds gradio components. Hook used: ``before_process`` (A1111
>= 1.6, Forge, reForge), which runs before the host validates the sampler and writes the infotext.
Nothing here raises into the host: every UI callback and hook turns an error into one line shown where
the user looks (the accordion, the comment under the image, the infotext that API users get back).
"""
from __future__ import annotations

import html
import sys
from pathlib import Path
from typing import Any

import gradio as gr
from modules import scripts, shared

from tlcm.errors import one_line
from tlcm.lora import base_mismatch
from tlcm.schedules import DEFAULT_STEPS, MAX_STEPS, MIN_STEPS, STEP_RANGE_TEXT

from . import SAMPLER_NAME, lora_folder
from .applied_loras import applied_loras
from .mode import apply_tlcm_mode, check_mode_args, main_control_values, mode_from_infotext, steps_from_infotext
from .model_kind import webui_model_kind

TITLE = "TLCM"


INFOTEXT_WARNING = "TLCM warning"


def report(p: Any, message: str) -> None:
    """Tell the user: console line and, when ``p`` is given, a comment under the image and an infotext entry
    (the infotext is what API callers get back in ``info``)."""
    print(f"[TLCM] {message}", file=sys.stderr)
    if p is None:
        return
    if hasattr(p, "comment"):
        p.comment(f"TLCM: {message}")
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        earlier = params.get(INFOTEXT_WARNING)
        params[INFOTEXT_WARNING] = f"{earlier}; {message}" if earlier else message


def describe(err: BaseException) -> str:
    """What a user sees of an unexpected error: its type and its message on one line."""
    return f"{type(err).__name__}: {one_line(err)}"


def lora_dir() -> Path:
    """The Lora folder (``--lora-dir`` of the built-in Lora extension, default ``models/Lora``)."""
    configured = getattr(shared.cmd_opts, "lora_dir", None)
    if configured:
        return Path(configured)
    from modules import paths
    return Path(paths.models_path) / "Lora"


def lora_status() -> str:
    """HTML for the accordion: the PEFT-layout files still needing conversion (a visible warning) or all clear."""
    try:
        pending = [item for item in lora_folder.scan(lora_dir()) if not item.is_converted]
    except Exception as err:  # a UI callback must answer, never raise into the host (HTTP 500)
        return f"<p>TLCM: could not scan the Lora folder: {html.escape(describe(err))}</p>"
    if not pending:
        return f"<p>No unconverted PEFT/diffusers LoRA files in <code>{html.escape(str(lora_dir()))}</code>.</p>"
    rows = "".join(f"<li>{html.escape(lora_folder.warning_text(item))}</li>" for item in pending)
    return (f"<div style='color: var(--color-accent)'><b>&#9888; LoRA files the WebUI cannot apply:</b>"
            f"<ul>{rows}</ul></div>")


def convert_pending() -> str:
    """The "Convert LoRA files" button: convert every pending file, report each result (console and UI)."""
    lines = []
    try:
        pending = [i for i in lora_folder.scan(lora_dir()) if not i.is_converted]
    except Exception as err:  # a UI callback must answer, never raise into the host (HTTP 500)
        return f"<p>TLCM: could not scan the Lora folder: {html.escape(describe(err))}</p>"
    for item in pending:
        try:
            lines.append(lora_folder.convert(item))
        except Exception as err:  # one bad file must not hide the others' results
            lines.append(f"{item.path.name}: not converted: {describe(err)}")
        print(f"[TLCM] {lines[-1]}", file=sys.stderr)
    if not lines:
        return lora_status()
    done = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<ul>{done}</ul><p>Refresh the Lora tab to list the new files.</p>"


def paste_field(component: Any, target: Any) -> Any:
    """``PasteField`` where the host has it (A1111 >= 1.8), else the plain (component, target) pair."""
    try:
        from modules.infotext_utils import PasteField
    except ImportError:
        return component, target
    return PasteField(component, target)


def warn_about_peft_loras(p: Any) -> None:
    """Warn (console and under the image) for each ``<lora:NAME>`` of the prompt that is a PEFT-layout file."""
    prompts = [*(p.prompt if isinstance(p.prompt, list) else [p.prompt]), getattr(p, "hr_prompt", "")]
    names = lora_folder.lora_names(prompts)
    for item in lora_folder.scan(lora_dir(), names=names) if names else []:
        report(p, lora_folder.warning_text(item))


def report_applied_loras(p: Any) -> None:
    """After the Lora extension activated its networks: how many modules each one really patched (where the
    host can tell); no match, partial matches and a LoRA distilled from another kind of model (ε/v, zero
    SNR) are warnings."""
    model = webui_model_kind(shared.sd_model, shared.opts)
    for lora in applied_loras(sys.modules.get("networks"), shared.sd_model):
        if model is not None and (mismatch := base_mismatch(lora.base, model, f"LoRA {lora.name}")):
            report(p, mismatch)
        if (warning := lora.warning()) is not None:
            report(p, warning)
        elif lora.applied is not None:
            print(f"[TLCM] LoRA {lora.name}: {lora.applied} modules applied", file=sys.stderr)


class TLCMScript(scripts.Script):
    """TLCM mode: sampler TLCM, schedule TLCM, CFG 1, 1-8 steps; stored in and restored from the infotext.

    Turning the switch on (or moving its slider) also sets the tab's own sampler, schedule, steps and CFG
    controls, found by elem_id when the WebUI creates them (they exist before this script's ``ui`` runs,
    so the callbacks are requested in ``show``). Generation does not depend on that: ``before_process``
    applies the mode for UI and API requests alike.
    """

    def __init__(self) -> None:
        self.main_controls: dict[str, Any] = {}
        self.main_controls_requested = False

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        if not self.main_controls_requested:
            tab = "img2img" if is_img2img else "txt2img"
            for key in main_control_values(DEFAULT_STEPS):
                self.on_after_component(lambda c, key=key: self.main_controls.__setitem__(key, c.component),
                                        elem_id=f"{tab}_{key}")
            self.main_controls_requested = True
        return scripts.AlwaysVisible

    def sync_main_controls(self, enabled: Any, steps: Any) -> None:
        """Wire the switch and slider to the tab's own controls (those this WebUI version has)."""
        keys = [key for key in main_control_values(DEFAULT_STEPS) if key in self.main_controls]
        if not keys:
            return

        def updates(on: bool, n: float) -> list[Any]:
            values = main_control_values(int(n))
            return [gr.update(value=values[key]) if on else gr.update() for key in keys]

        for control in (enabled, steps):
            control.change(fn=updates, inputs=[enabled, steps], outputs=[self.main_controls[k] for k in keys])

    def ui(self, is_img2img: bool) -> list[Any]:
        with gr.Accordion(TITLE, open=False, elem_id=self.elem_id("accordion")):
            enabled = gr.Checkbox(label="TLCM mode", value=False, elem_id=self.elem_id("mode"))
            steps = gr.Slider(label="TLCM steps", minimum=MIN_STEPS, maximum=MAX_STEPS, step=1, value=DEFAULT_STEPS,
                              info=STEP_RANGE_TEXT, elem_id=self.elem_id("steps"))
            gr.Markdown("Sets sampler **TLCM**, schedule **TLCM**, **CFG 1** (the negative prompt has no effect) and "
                        "the steps. Add the converted TLCM LoRA to the prompt: `<lora:NAME-kohya:1>`.")
            status = gr.HTML(value=lora_status, elem_id=self.elem_id("lora_status"))
            convert = gr.Button("Convert LoRA files", elem_id=self.elem_id("convert"))
            convert.click(fn=convert_pending, inputs=[], outputs=[status])
        self.sync_main_controls(enabled, steps)
        self.infotext_fields = [paste_field(enabled, mode_from_infotext), paste_field(steps, steps_from_infotext)]
        return [enabled, steps]

    def before_process(self, p: Any, enabled: Any = False, steps: Any = DEFAULT_STEPS, *args: Any) -> None:
        try:
            warn_about_peft_loras(p)
        except Exception as err:  # a warning helper must never stop the generation
            report(p, f"could not check the prompt's LoRA files: {describe(err)}")
        try:
            enabled, steps = check_mode_args(enabled, steps)
        except ValueError as err:
            report(p, f"{err}; generating without TLCM mode")
            return
        if enabled:
            apply_tlcm_mode(p, steps)

    def after_extra_networks_activate(self, p: Any, *args: Any, **kwargs: Any) -> None:
        if p.sampler_name != SAMPLER_NAME:
            return
        try:
            report_applied_loras(p)
        except Exception as err:  # the report is advice; the generation goes on
            report(p, f"could not count the applied LoRA modules: {describe(err)}")
