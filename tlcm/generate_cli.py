"""``tlcm generate``: local SDXL or FLUX.1 + TLCM LoRA(s) -> PNGs with their settings embedded."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from .generate import GenerationSettings, apply_loras, generate, native_size, save_images, size_warning
from .schedules import DEFAULT_STEPS, STEP_RANGE_TEXT


def parse_lora(text: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:STRENGTH``; only a number after the last colon is a strength (``C:\\x`` is a path)."""
    path, sep, strength = text.rpartition(":")
    if sep and path:
        try:
            return path, float(strength)
        except ValueError:
            pass
    return text, 1.0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="generate images with a local SDXL or FLUX model and a TLCM LoRA",
                              description=__doc__)
    p.add_argument("--model", required=True, help="SDXL diffusers folder or single-file .safetensors checkpoint, "
                                                  "or a FLUX.1 diffusers folder")
    p.add_argument("--config", help="diffusers folder whose configs describe a single-file checkpoint "
                                    "(default: the bundled SDXL base 1.0 configs)")
    p.add_argument("--lora", action="append", type=parse_lora, default=[], metavar="PATH[:STRENGTH]",
                   help="TLCM LoRA (official PEFT, diffusers or kohya); repeatable")
    p.add_argument("--lora-alpha", type=float, help="override the LoRA alpha (the official script uses 8 at rank 64)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="", help="needs --cfg > 1")
    p.add_argument("--chinese-text-model", metavar="DIR",
                   help="Chinese-CLIP folder (OFA-Sys/chinese-clip-vit-huge-patch14): encode --prompt in Chinese")
    p.add_argument("--chinese-adapter", metavar="FILE", help="PEA-Diffusion adapter (OPPOer/PEA-Diffusion)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=STEP_RANGE_TEXT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, help="default: the model's native width (SDXL: 1024), read from its configs")
    p.add_argument("--height", type=int, help="default: the model's native height (SDXL: 1024)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--cfg", type=float, default=1.0, help="CFG scale; 1 = off, as the official sampler")
    p.add_argument("--flux-guidance", type=float,
                   help="FLUX only: the guidance embedding (default 7, the official TLCM-FLUX value)")
    p.add_argument("--eta", type=float, default=1.0, help="stochasticity: 1 = official fresh noise, 0 = deterministic")
    p.add_argument("--schedule", default="tlcm", choices=["tlcm", "uniform"])
    p.add_argument("--init-image", help="img2img source image")
    p.add_argument("--strength", type=float, default=1.0, help="img2img denoise strength")
    p.add_argument("--device", help="cuda / mps / cpu (default: best available)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: bf16/fp16 on GPU, fp32 on CPU")
    p.add_argument("--out", default="outputs/generate", help="output folder")
    p.set_defaults(func=run)
    return p


def _run_flux(args: argparse.Namespace, settings: GenerationSettings, given_size: dict) -> int:
    import torch

    from .generate_flux import check_flux_settings, generate_flux, load_flux_pipeline
    check_flux_settings(settings)
    unused = [flag for flag, value in (("--config", args.config), ("--init-image", args.init_image),
                                       ("--chinese-text-model", args.chinese_text_model)) if value]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not available for FLUX models")
    pipe = load_flux_pipeline(args.model, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None)
    native = pipe.default_sample_size * pipe.vae_scale_factor
    settings.width, settings.height = given_size.get("width", native), given_size.get("height", native)
    apply_loras(pipe, settings.loras, alpha=args.lora_alpha)
    for path in save_images(generate_flux(pipe, settings), args.out, settings):
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from .models import load_sdxl_pipeline
    # An unset size is the model's native one, known only once it is loaded; the settings' valid default stands
    # in for it meanwhile, so that every other setting is checked before the (slow) model load.
    given_size = {name: value for name, value in (("width", args.width), ("height", args.height)) if value is not None}
    from .generate_flux import FLUX_GUIDANCE, is_flux_folder
    flux = is_flux_folder(args.model)
    if args.flux_guidance is not None and not flux:
        raise ValueError(f"--flux-guidance applies to FLUX models; {args.model} is not a FLUX folder")
    settings = GenerationSettings(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, seed=args.seed,
        batch_size=args.batch, guidance_scale=args.cfg, eta=args.eta, schedule=args.schedule,
        strength=args.strength, loras=args.lora, model=args.model,
        flux_guidance=(FLUX_GUIDANCE if args.flux_guidance is None else args.flux_guidance) if flux else None, **given_size)
    settings.validate()
    if flux:
        return _run_flux(args, settings, given_size)
    init_image = None
    if args.init_image:
        if not Path(args.init_image).is_file():
            raise FileNotFoundError(f"init image not found: {args.init_image}")
        init_image = Image.open(args.init_image)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if bool(args.chinese_text_model) != bool(args.chinese_adapter):
        raise ValueError("Chinese prompts need both --chinese-text-model and --chinese-adapter")
    pipe = load_sdxl_pipeline(args.model, device=args.device, dtype=dtype, config=args.config)
    native = native_size(pipe)
    settings.width, settings.height = given_size.get("width", native[0]), given_size.get("height", native[1])
    warning = size_warning(settings.width, settings.height, native)
    if warning:
        print(f"tlcm: warning: {warning}", file=sys.stderr, flush=True)
    apply_loras(pipe, settings.loras, alpha=args.lora_alpha)
    embeds = {}
    if args.chinese_text_model:
        from .chinese import ChineseTextEncoder
        encoder = ChineseTextEncoder.from_pretrained(args.chinese_text_model, args.chinese_adapter,
                                                     device=pipe.unet.device, dtype=pipe.unet.dtype)
        embeds = dict(zip(("prompt_embeds", "pooled_prompt_embeds"), encoder.encode([settings.prompt])))
    images = generate(pipe, settings, init_image=init_image, **embeds)
    for path in save_images(images, args.out, settings):
        print(path)
    return 0
