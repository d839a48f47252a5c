"""Generate images with a local SDXL model + TLCM LoRA(s) in 1-8 steps, the official way by default.

Defaults follow the official inference script: TLCM milestone schedule, fresh noise at each milestone
(``eta=1``), no classifier-free guidance (guidance w=8 is distilled into the LoRA). CFG with a negative
prompt is available (``guidance_scale > 1``) at twice the UNet cost per step.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, PngImagePlugin

from .errors import check_finite
from .files import atomic_write
from .schedules import DEFAULT_STEPS, check_step_count, schedule_timesteps

SAMPLER_NAME = "TLCM"
_IMAGE_INDEX = re.compile(r"^tlcm-(\d+)-")


@dataclass
class GenerationSettings:
    """What one ``generate`` call makes; stored verbatim in every PNG it writes."""

    prompt: str
    steps: int = DEFAULT_STEPS
    seed: int = 0
    width: int = 1024
    height: int = 1024
    batch_size: int = 1
    negative_prompt: str = ""
    guidance_scale: float = 1.0          # <= 1: CFG off (official); > 1: CFG with negative_prompt
    eta: float = 1.0                     # 1 = official fresh noise; 0 = deterministic
    schedule: str = "tlcm"
    strength: float = 1.0                # img2img denoise; used only with an init image
    loras: list[tuple[str, float]] = field(default_factory=list)
    model: str = ""
    flux_guidance: float | None = None   # FLUX only: its guidance embedding (no CFG there)

    def validate(self) -> None:
        if not isinstance(self.steps, int):
            raise ValueError(f"steps must be a whole number, got {self.steps!r}")
        check_step_count(self.steps)
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.negative_prompt and self.guidance_scale <= 1.0:
            raise ValueError("a negative prompt only acts with CFG: set guidance_scale > 1 (e.g. 2), or drop it")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        if self.flux_guidance is not None and not self.flux_guidance > 0:
            raise ValueError(f"flux_guidance must be > 0, got {self.flux_guidance!r}")
        schedule_timesteps(self.steps, self.schedule, denoise=self.strength)   # raises on a bad schedule

    def infotext(self) -> str:
        """A1111-style ``parameters`` text, so WebUI "PNG Info" can read our images."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        fields = [f"Steps: {self.steps}", f"Sampler: {SAMPLER_NAME}", f"Schedule type: {self.schedule.upper()}",
                  f"CFG scale: {self.guidance_scale:g}", f"Seed: {self.seed}", f"Size: {self.width}x{self.height}"]
        if self.model:
            fields.append(f"Model: {Path(self.model).stem}")
        if self.flux_guidance is not None:          # the name Forge gives FLUX's guidance embedding
            fields.append(f"Distilled CFG Scale: {self.flux_guidance:g}")
        if self.eta != 1.0:
            fields.append(f"TLCM eta: {self.eta:g}")
        if self.strength < 1.0:
            fields.append(f"Denoising strength: {self.strength:g}")
        fields += [f"Lora {Path(p).stem}: {s:g}" for p, s in self.loras]
        return "\n".join(lines + [", ".join(fields)])


# A size further than this factor from the model's native one, on either side, is outside what it was trained on.
SIZE_WARNING_FACTOR = 2.0


def native_size(pipe) -> tuple[int, int]:
    """(width, height) the model was trained at: its UNet's latent ``sample_size`` times the VAE's downscale
    factor, the size diffusers' SDXL pipelines fall back to (``default_sample_size × vae_scale_factor``):
    1024² for SDXL, the model's own for a tiny or toy one."""
    sample = pipe.unet.config.sample_size
    height, width = (sample, sample) if isinstance(sample, int) else sample
    return width * pipe.vae_scale_factor, height * pipe.vae_scale_factor


def size_warning(width: int, height: int, native: tuple[int, int]) -> str | None:
    """One line when a side is under 1/2 or over 2× the native one (else None): the model then samples at
    a scale it never saw, slowly for a large size, and mostly gives noise or broken composition."""
    far = [(side, own) for side, own in zip((width, height), native)
           if not own / SIZE_WARNING_FACTOR <= side <= own * SIZE_WARNING_FACTOR]
    if not far:
        return None
    return (f"{width}x{height} is far from this model's native size {native[0]}x{native[1]} (more than "
            f"{SIZE_WARNING_FACTOR:g}x on a side): expect slow sampling and noisy or broken images")


def apply_lora(pipe, lora, name: str, strength: float):
    """Merge one loaded ``LoraFile`` into ``pipe.unet`` (a FLUX pipeline's ``transformer``) at ``strength``
    and return its match report; a LoRA recorded as distilled from another kind of SDXL model (prediction
    type, zero SNR) is warned about first."""
    from .lora import BaseKind, base_mismatch, merge_lora
    transformer = getattr(pipe, "transformer", None)
    if transformer is None and (warning := base_mismatch(lora.base, BaseKind.from_scheduler_config(
            pipe.scheduler.config), name)):
        print(f"[tlcm] warning: {warning}", file=sys.stderr, flush=True)
    report = merge_lora(pipe.unet if transformer is None else transformer, lora, strength)
    print(f"[tlcm] LoRA {name} @ {strength:g}: {report.summary()}", flush=True)
    return report


def apply_loras(pipe, loras: Sequence[tuple[str, float]], *, alpha: float | None = None) -> list:
    """Load and merge each (path, strength) LoRA into ``pipe.unet`` (:func:`apply_lora`); returns the match
    reports (errors if none match)."""
    from .lora import load_lora
    return [apply_lora(pipe, load_lora(path, alpha=alpha), Path(path).name, strength) for path, strength in loras]


def use_tlcm_scheduler(pipe, *, eta: float = 1.0, schedule: str = "tlcm") -> None:
    """Swap the pipeline's scheduler for TLCM, keeping the model's own noise schedule and prediction type."""
    from .scheduler import TLCMScheduler        # imports diffusers: not needed to start the CLI
    pipe.scheduler = TLCMScheduler.from_config(pipe.scheduler.config, eta=eta, schedule=schedule)


def generate(pipe, settings: GenerationSettings, *, init_image: Image.Image | None = None,
             prompt_embeds: torch.Tensor | None = None, pooled_prompt_embeds: torch.Tensor | None = None,
             callback: Callable[[Any, int, Any, dict], dict] | None = None) -> list[Image.Image]:
    """Run ``pipe`` (an SDXL pipeline) with TLCM; img2img when ``init_image`` is given.

    Precomputed ``prompt_embeds``/``pooled_prompt_embeds`` (e.g. from the Chinese text encoder) replace
    the pipeline's own text encoders. Seeds follow the WebUI convention: image i uses ``seed + i``.
    A NaN/Inf latent or decoded image raises ``tlcm.errors.NonFiniteError`` rather than returning black images.
    """
    settings.validate()
    use_tlcm_scheduler(pipe, eta=settings.eta, schedule=settings.schedule)
    device = pipe.unet.device
    generators = [torch.Generator(device).manual_seed(settings.seed + i) for i in range(settings.batch_size)]
    cfg = settings.guidance_scale > 1.0
    kwargs: dict[str, Any] = dict(
        guidance_scale=settings.guidance_scale if cfg else 0.0, generator=generators, output_type="pt",
        height=settings.height, width=settings.width, callback_on_step_end=callback,
        timesteps=schedule_timesteps(settings.steps, settings.schedule,
                                     denoise=settings.strength if init_image is not None else 1.0))
    if prompt_embeds is None:
        kwargs.update(prompt=[settings.prompt] * settings.batch_size,
                      negative_prompt=[settings.negative_prompt] * settings.batch_size if cfg else None)
    else:
        if prompt_embeds.shape[0] != 1 or pooled_prompt_embeds is None:
            raise ValueError("pass the embeddings of one prompt (batch dimension 1) with its pooled embedding")
        if cfg and settings.negative_prompt:
            raise ValueError("with precomputed prompt embeddings CFG uses a zero unconditional embedding; "
                             "a negative prompt text cannot be encoded by the same encoder here: drop it")
        kwargs.update(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                      num_images_per_prompt=settings.batch_size)
    if init_image is None:
        return to_pil_images(pipe(**kwargs).images)
    from diffusers import StableDiffusionXLImg2ImgPipeline
    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    init = init_image.convert("RGB").resize((settings.width, settings.height))
    return to_pil_images(img2img(image=init, strength=1.0, **kwargs).images)   # the TLCM rule is in `timesteps`


def to_pil_images(images: torch.Tensor) -> list[Image.Image]:
    """PIL images of the pipeline's [0, 1] output, which must be finite: PIL would turn NaN into black."""
    from diffusers.image_processor import VaeImageProcessor
    check_finite(images, "the decoded image", "the VAE overflowed (SDXL's VAE does in float16): run in bfloat16 "
                 "or float32, or use an fp16-safe VAE")
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images))


def _next_index(out_dir: Path) -> int:
    """One past the highest ``tlcm-NNNNN-`` index in ``out_dir``: new names never meet old ones."""
    indices = [int(m[1]) for p in out_dir.glob("tlcm-*.png") if (m := _IMAGE_INDEX.match(p.name))]
    return max(indices, default=-1) + 1


def save_images(images: Sequence[Image.Image], out_dir: str | Path, settings: GenerationSettings) -> list[Path]:
    """Write PNGs whose text chunks hold the A1111 ``parameters`` line and the full settings as JSON.

    Each PNG is written atomically under a fresh index and never replaces an existing file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = _next_index(out_dir)
    paths = []
    for i, image in enumerate(images):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", settings.infotext())
        info.add_text("tlcm", json.dumps({**asdict(settings), "seed": settings.seed + i}))
        path = out_dir / f"tlcm-{start + i:05d}-{settings.steps}steps-seed{settings.seed + i}.png"
        paths.append(_write_png(path, image, info))
    return paths


def _write_png(path: Path, image: Image.Image, info: PngImagePlugin.PngInfo) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), overwrite=False)
