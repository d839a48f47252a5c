"""The three sampler settings of the paper's Table 1, as one spec string each, and one image from each.

``tlcm:N`` is the student as the official script samples it (``TLCMScheduler``, no CFG, through
``tlcm.generate.generate``, the same path as ``tlcm generate``); ``ddim:N:CFG`` is the teacher with
classifier-free guidance on trailing DDIM timesteps (docs/eval.md §6: the strongest few-step teacher
baseline, and 999-first at any N); ``lcm:N`` is diffusers' ``LCMScheduler`` on the model's own config, the
way LCM-LoRA is sampled, without CFG. Each setting states what it ran in ``describe()``, so the result
file says it too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("tlcm", "ddim", "lcm")
SPEC_HELP = "tlcm:N (TLCMScheduler, CFG off), ddim:N:CFG (teacher DDIM, trailing timesteps, CFG), lcm:N (LCMScheduler)"


@dataclass(frozen=True)
class Sampler:
    """A parsed sampler setting."""

    kind: str
    steps: int
    cfg: float = 1.0

    @property
    def spec(self) -> str:
        return f"ddim:{self.steps}:{self.cfg:g}" if self.kind == "ddim" else f"{self.kind}:{self.steps}"

    @property
    def uses_cfg(self) -> bool:
        return self.cfg > 1.0

    @property
    def label(self) -> str:
        """The Table 1 method name."""
        return {"tlcm": "TLCM", "ddim": "DDIM", "lcm": "LCM"}[self.kind]

    def describe(self) -> dict:
        scheduler = {"tlcm": "tlcm.TLCMScheduler (official milestones, eta 1)",
                     "ddim": "diffusers.DDIMScheduler (timestep_spacing trailing)",
                     "lcm": "diffusers.LCMScheduler (the model's scheduler config)"}[self.kind]
        return {"spec": self.spec, "kind": self.kind, "steps": self.steps, "cfg": self.cfg,
                "scheduler": scheduler, "expected_unet_evals_per_image": self.steps * (2 if self.uses_cfg else 1)}


def parse_sampler(text: str) -> Sampler:
    """``tlcm:4``, ``ddim:25:5`` or ``lcm:4``; ``ValueError`` naming the accepted forms otherwise."""
    parts = text.strip().lower().split(":")
    kind = parts[0]
    expected_parts = 3 if kind == "ddim" else 2
    if kind not in KINDS or len(parts) != expected_parts:
        raise ValueError(f"sampler {text!r}: expected {SPEC_HELP}")
    try:
        steps = int(parts[1])
        cfg = float(parts[2]) if kind == "ddim" else 1.0
    except ValueError:
        raise ValueError(f"sampler {text!r}: steps must be a whole number and CFG a number ({SPEC_HELP})") from None
    if steps < 1:
        raise ValueError(f"sampler {text!r}: steps must be >= 1")
    if not cfg >= 1.0:      # also refuses NaN
        raise ValueError(f"sampler {text!r}: CFG must be >= 1 (1 = off)")
    if kind == "tlcm":
        from ..schedules import check_step_count
        check_step_count(steps)
    return Sampler(kind, steps, cfg)


def prepare_pipeline(pipe, sampler: Sampler) -> None:
    """Put the sampler's scheduler on ``pipe`` once (TLCM's is set by ``generate`` on every call)."""
    if sampler.kind == "ddim":
        from diffusers import DDIMScheduler
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    elif sampler.kind == "lcm":
        from diffusers import LCMScheduler
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)


def sample_image(pipe, sampler: Sampler, prompt: str, seed: int, width: int, height: int):
    """One PIL image of ``prompt`` from noise seeded by ``seed`` (a generator on the UNet's device)."""
    from ..generate import GenerationSettings, generate
    if sampler.kind == "tlcm":
        settings = GenerationSettings(prompt=prompt, steps=sampler.steps, seed=seed, width=width, height=height)
        return generate(pipe, settings)[0]
    from ..generate import to_pil_images
    generator = torch.Generator(pipe.unet.device).manual_seed(seed)
    images = pipe(prompt=prompt, num_inference_steps=sampler.steps,
                  guidance_scale=sampler.cfg if sampler.uses_cfg else 0.0, generator=generator,
                  width=width, height=height, output_type="pt").images
    return to_pil_images(images)[0]


class UnetCounter:
    """Counts UNet evaluations per image: batch rows through ``pipe.unet`` (a CFG step is two)."""

    def __init__(self, unet) -> None:
        self.rows = 0
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.rows += int(sample.shape[0])

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows

    def close(self) -> None:
        self._handle.remove()
