"""The sampler settings of the paper's Table 1 (and their FLUX counterparts), as one spec string each, and one
image from each.

``tlcm:N`` is the student as the official script samples it (``TLCMScheduler``, no CFG, through
``tlcm.generate.generate``, the same path as ``tlcm generate``; on a FLUX model the official TLCM-FLUX step
through ``tlcm.generate_flux`` with the guidance embedding); ``ddim:N:CFG`` is the teacher with
classifier-free guidance on trailing DDIM timesteps (docs/eval.md §6: the strongest few-step teacher
baseline, and 999-first at any N); ``lcm:N`` is diffusers' ``LCMScheduler`` on the model's own config, the
way LCM-LoRA is sampled, without CFG; ``diffusers:NAME:N:CFG`` is any diffusers scheduler by class name on
the model's scheduler config (a baseline such as ``diffusers:DPMSolverMultistepScheduler:25:5``);
``flux:N:G`` is a FLUX model's own sampler (diffusers' ``FlowMatchEulerDiscreteScheduler`` on the model's
config) with guidance embedding G, the FLUX teacher.
Each setting states what it ran in ``describe()``, so the result file says it too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

KINDS = ("tlcm", "ddim", "lcm", "diffusers", "flux")
SDXL_ONLY, FLUX_ONLY = ("ddim", "lcm", "diffusers"), ("flux",)
SPEC_HELP = ("tlcm:N (TLCMScheduler, CFG off), ddim:N:CFG (teacher DDIM, trailing timesteps, CFG), lcm:N "
             "(LCMScheduler), diffusers:NAME:N:CFG (any diffusers scheduler by class name, e.g. "
             "diffusers:EulerDiscreteScheduler:25:5); FLUX models: tlcm:N, flux:N:GUIDANCE (FLUX's own Euler sampler)")
# Consistency-model samplers run on the DDPM schedule of SDXL but are absent from diffusers' ``compatibles`` lists.
CONSISTENCY_SCHEDULERS = ("LCMScheduler", "TCDScheduler")
FLUX_TEACHER_HINT = "a FLUX model takes tlcm:N or flux:N:GUIDANCE (its own sampler, e.g. flux:28:3.5)"


@dataclass(frozen=True)
class Sampler:
    """A parsed sampler setting; ``guidance`` is a FLUX model's guidance embedding (None on SDXL)."""

    kind: str
    steps: int
    cfg: float = 1.0
    guidance: float | None = None
    scheduler: str | None = None

    @property
    def spec(self) -> str:
        if self.kind == "ddim":
            return f"ddim:{self.steps}:{self.cfg:g}"
        if self.kind == "flux":
            return f"flux:{self.steps}:{self.guidance:g}"
        if self.kind == "diffusers":
            return f"diffusers:{self.scheduler}:{self.steps}:{self.cfg:g}"
        return f"{self.kind}:{self.steps}"

    @property
    def uses_cfg(self) -> bool:
        return self.cfg > 1.0

    @property
    def label(self) -> str:
        """The Table 1 method name."""
        if self.kind == "diffusers":
            return self.scheduler
        return {"tlcm": "TLCM", "ddim": "DDIM", "lcm": "LCM", "flux": "FLUX Euler"}[self.kind]

    def for_model(self, flux: bool, flux_guidance: float | None = None) -> "Sampler":
        """This setting on a FLUX (``flux``) or SDXL model; ``ValueError`` where the model cannot run it.
        ``tlcm:N`` on FLUX takes ``flux_guidance`` (default the official TLCM-FLUX 7)."""
        from ..generate_flux import FLUX_GUIDANCE
        if flux and self.kind in SDXL_ONLY:
            raise ValueError(f"sampler {self.spec}: an SDXL sampler; {FLUX_TEACHER_HINT}")
        if not flux and self.kind in FLUX_ONLY:
            raise ValueError(f"sampler {self.spec}: FLUX's own sampler needs a FLUX model")
        if flux_guidance is not None and not (flux and self.kind == "tlcm"):
            raise ValueError("--flux-guidance applies to tlcm:N on a FLUX model (flux:N:GUIDANCE carries its own)")
        if flux and self.kind == "tlcm":
            guidance = FLUX_GUIDANCE if flux_guidance is None else flux_guidance
            if not guidance > 0:
                raise ValueError(f"--flux-guidance must be > 0, got {guidance!r}")
            return replace(self, guidance=guidance)
        return self

    def describe(self) -> dict:
        scheduler = {"tlcm": "tlcm.TLCMScheduler (official milestones, eta 1)",
                     "ddim": "diffusers.DDIMScheduler (timestep_spacing trailing)",
                     "lcm": "diffusers.LCMScheduler (the model's scheduler config)",
                     "flux": "diffusers.FlowMatchEulerDiscreteScheduler (the model's config, resolution shift)",
                     "diffusers": f"diffusers.{self.scheduler} (the model's scheduler config)"}[self.kind]
        if self.kind == "tlcm" and self.guidance is not None:
            scheduler = "tlcm.TLCMFlowMatchScheduler (official TLCM-FLUX step, resolution shift, fresh noise)"
        described = {"spec": self.spec, "kind": self.kind, "steps": self.steps, "cfg": self.cfg,
                     "scheduler": scheduler, "expected_unet_evals_per_image": self.steps * (2 if self.uses_cfg else 1)}
        if self.guidance is not None:
            described["guidance_embedding"] = self.guidance
        return described


def diffusers_scheduler_name(name: str, spec: str) -> str:
    """The diffusers scheduler class spelled ``name`` in any case; ``ValueError`` when diffusers has none."""
    import diffusers
    from diffusers import SchedulerMixin
    classes = {n.lower(): n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Flax")}
    found = classes.get(name.lower())
    if found is None or not issubclass(getattr(diffusers, found), SchedulerMixin):
        raise ValueError(f"sampler {spec!r}: {name!r} is not a diffusers scheduler class "
                         "(e.g. EulerDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler)")
    return found


def parse_sampler(text: str) -> Sampler:
    """``tlcm:4``, ``ddim:25:5``, ``lcm:4``, ``diffusers:EulerDiscreteScheduler:25:5`` or ``flux:28:3.5``;
    ``ValueError`` naming the accepted forms otherwise."""
    parts = text.strip().split(":")
    kind, scheduler = parts[0].lower(), None
    if kind == "diffusers":
        if len(parts) != 4:
            raise ValueError(f"sampler {text!r}: expected {SPEC_HELP}")
        scheduler = diffusers_scheduler_name(parts.pop(1), text)
    expected_parts = 3 if kind in ("ddim", "flux", "diffusers") else 2
    if kind not in KINDS or len(parts) != expected_parts:
        raise ValueError(f"sampler {text!r}: expected {SPEC_HELP}")
    try:
        steps = int(parts[1])
        third = float(parts[2]) if expected_parts == 3 else 1.0
    except ValueError:
        raise ValueError(f"sampler {text!r}: steps must be a whole number, CFG and guidance numbers ({SPEC_HELP})") from None
    if steps < 1:
        raise ValueError(f"sampler {text!r}: steps must be >= 1")
    if kind == "flux":
        if not third > 0:       # also refuses NaN
            raise ValueError(f"sampler {text!r}: the guidance embedding must be > 0")
        return Sampler(kind, steps, guidance=third)
    if not third >= 1.0:
        raise ValueError(f"sampler {text!r}: CFG must be >= 1 (1 = off)")
    if kind == "tlcm":
        from ..schedules import check_step_count
        check_step_count(steps)
    return Sampler(kind, steps, third, scheduler=scheduler)


def denoiser(pipe) -> torch.nn.Module:
    """The network a pipeline runs each step: an SDXL UNet or a FLUX transformer."""
    transformer = getattr(pipe, "transformer", None)
    return pipe.unet if transformer is None else transformer


def prepare_pipeline(pipe, sampler: Sampler) -> None:
    """Put the sampler's scheduler on ``pipe`` once (TLCM's is set by ``generate`` on every call)."""
    if sampler.kind == "ddim":
        from diffusers import DDIMScheduler
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    elif sampler.kind == "lcm":
        from diffusers import LCMScheduler
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    elif sampler.kind == "flux":
        from diffusers import FlowMatchEulerDiscreteScheduler
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    elif sampler.kind == "diffusers":
        import diffusers
        chosen, own = getattr(diffusers, sampler.scheduler), pipe.scheduler
        if chosen not in own.compatibles and sampler.scheduler not in CONSISTENCY_SCHEDULERS:
            names = sorted(c.__name__ for c in own.compatibles) + list(CONSISTENCY_SCHEDULERS)
            raise ValueError(f"sampler {sampler.spec}: {sampler.scheduler} does not share the noise schedule of "
                             f"this model's {type(own).__name__}; compatible: {', '.join(names)}")
        pipe.scheduler = chosen.from_config(own.config)


def sample_image(pipe, sampler: Sampler, prompt: str, seed: int, width: int, height: int):
    """One PIL image of ``prompt`` from noise seeded by ``seed`` (SDXL: a generator on the UNet's device;
    FLUX: on the CPU, as ``tlcm generate`` draws FLUX noise)."""
    from ..generate import GenerationSettings, generate, to_pil_images
    if sampler.kind == "tlcm":
        settings = GenerationSettings(prompt=prompt, steps=sampler.steps, seed=seed, width=width, height=height,
                                      flux_guidance=sampler.guidance)
        if sampler.guidance is None:
            return generate(pipe, settings)[0]
        from ..generate_flux import generate_flux
        return generate_flux(pipe, settings)[0]
    if sampler.kind == "flux":
        images = pipe(prompt=prompt, num_inference_steps=sampler.steps, guidance_scale=sampler.guidance,
                      generator=torch.Generator().manual_seed(seed), width=width, height=height,
                      output_type="pt").images
        return to_pil_images(images)[0]
    generator = torch.Generator(pipe.unet.device).manual_seed(seed)
    images = pipe(prompt=prompt, num_inference_steps=sampler.steps,
                  guidance_scale=sampler.cfg if sampler.uses_cfg else 0.0, generator=generator,
                  width=width, height=height, output_type="pt").images
    return to_pil_images(images)[0]


class UnetCounter:
    """Counts denoiser evaluations per image: batch rows through the UNet or FLUX transformer (a CFG step is
    two)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.rows = 0
        self._handle = network.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.rows += int(sample.shape[0])

    def take(self) -> int:
        rows, self.rows = self.rows, 0
        return rows

    def close(self) -> None:
        self._handle.remove()
