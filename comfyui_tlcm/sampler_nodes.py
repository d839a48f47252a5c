"""TLCM Sampler (SAMPLER) and TLCM Scheduler (SIGMAS) for SamplerCustom / SamplerCustomAdvanced."""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..tlcm.schedules import (DEFAULT_STEPS, MAX_STEPS, MIN_STEPS, SCHEDULES, STEP_RANGE_TEXT,
                              schedule_timesteps)
from .sampling import sample_tlcm, tlcm_sigmas

CATEGORY = "sampling/tlcm"
_EXAMPLE_STEPS = 4
STEPS_TOOLTIP = (f"Steps, one model call each: {STEP_RANGE_TEXT}. With schedule tlcm each count runs a fixed set "
                 f"of the milestones the LoRA was distilled on ({_EXAMPLE_STEPS} steps: t = "
                 f"{', '.join(map(str, schedule_timesteps(_EXAMPLE_STEPS)))}).")
DENOISE_TOOLTIP = ("1 = start from pure noise (text to image). Below 1 (img2img, hires pass) the "
                   "int(steps/denoise)-step schedule is built and only its last `steps` milestones run, as in "
                   f"KSampler: {_EXAMPLE_STEPS} steps at 0.5 run t = "
                   f"{', '.join(map(str, schedule_timesteps(_EXAMPLE_STEPS, denoise=0.5)))}.")


class TLCMSampler(io.ComfyNode):
    """The TLCM sampler; ``eta`` is the core's stochasticity (1 official fresh noise, 0 deterministic)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLCMSampler",
            display_name="TLCM Sampler",
            category=CATEGORY,
            description="TLCM sampler: predict x0 at each milestone and re-noise it to the next one. "
                        "Use CFG 1 (guidance is distilled into the LoRA).",
            inputs=[io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.05,
                                   tooltip="Stochasticity: 1 = fresh noise each step (official TLCM), "
                                           "0 = deterministic DDIM jump, between = blend.")],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, eta: float) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_tlcm, extra_options={"eta": eta}))


class TLCMScheduler(io.ComfyNode):
    """Milestone sigmas from the model's own model sampling (core rules for denoise < 1)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TLCMScheduler",
            display_name="TLCM Scheduler",
            category=CATEGORY,
            description="Sigmas of the TLCM milestone schedule. denoise < 1 builds the int(steps/denoise)-step "
                        "schedule (past 8 steps the milestone grid is refined) and keeps its last steps, as "
                        "KSampler does.",
            inputs=[
                io.Model.Input("model"),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=MIN_STEPS, max=MAX_STEPS, tooltip=STEPS_TOOLTIP),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01, tooltip=DENOISE_TOOLTIP),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="tlcm",
                               tooltip="tlcm: the official milestone table; uniform: the paper's q-step grid."),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, steps: int, denoise: float, schedule: str) -> io.NodeOutput:
        return io.NodeOutput(tlcm_sigmas(model.get_model_object("model_sampling"), steps, schedule, denoise))
