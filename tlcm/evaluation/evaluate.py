"""One evaluation run: check every input, generate (or resume) the images, score them, write the results.

Every weight a metric needs is checked before the first image is made, so a missing file is a one-line
error in seconds rather than after hours of sampling. Generation and scoring run in sequence on one device;
the pipeline is dropped before the metric models load.
"""
from __future__ import annotations

import gc
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .fid import (BUILT_IN_FEATURES, FeatureExtractor, fid_from_features, folder_features, image_files,
                  load_feature_extractor)
from .generation import check_folder, generate_set, image_path, load_images
from .inception import WEIGHTS_HINT
from .prompts import PROMPT_RULE, PROMPT_SET, PROMPTS_SHA256, load_coco_prompts, prompts_sha256
from .report import write_results
from .samplers import Sampler, denoiser, parse_sampler
from .weights import weights_sha256

RESULT_FORMAT = 1
IMAGES_FOLDER = "images"
MODEL_HINT = ("pass a local SDXL model: download stabilityai/stable-diffusion-xl-base-1.0 (diffusers folder) or "
              "sd_xl_base_1.0.safetensors from huggingface.co; or a FLUX.1-dev diffusers folder")
LORA_HINT = ("pass a local TLCM LoRA: download OPPOer/TLCMSDXL (or OPPOer/TLCMFlux for FLUX; "
             "adapter_model.safetensors + adapter_config.json)")
CLIP_WEIGHTS_HINT = ("pass a CLIP folder (transformers layout, e.g. laion/CLIP-ViT-g-14-laion2B-s12B-b42K, or "
                     "open_clip's, e.g. laion/CLIP-ViT-g-14-laion2B-s34B-b88K)")
FID_WEIGHTS_HINT = f"pass the feature extractor's weight file (the default extractor's: {WEIGHTS_HINT})"


@dataclass
class EvalConfig:
    model: str
    sampler: str
    out: str
    loras: list[tuple[str, float]] = field(default_factory=list)
    lora_alpha: float | None = None
    model_config: str | None = None
    flux_guidance: float | None = None              # tlcm:N on a FLUX model: its guidance embedding (default 7)
    limit: int | None = None
    seed: int = 0
    width: int | None = None
    height: int | None = None
    device: str | None = None
    dtype: str | None = None
    clip_model: str | None = None
    clip_pretrained: str = ""
    aesthetic_clip: str | None = None
    aesthetic_head: str | None = None
    image_reward: str | None = None
    image_reward_tokenizer: str | None = None
    fid_reference: str | None = None
    fid_teacher: str | None = None
    fid_features: str = BUILT_IN_FEATURES
    fid_weights: str | None = None
    progress: bool = True
    shard: tuple[int, int] | None = None           # (k, n): make only the images i % n == k, score nothing
    extractor: FeatureExtractor | None = None      # an already built extractor (API use), instead of fid_features


def _select_prompts(limit: int | None) -> list[str]:
    prompts = load_coco_prompts()
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def _teacher_folder(path: str) -> Path:
    """A generated folder: an eval output (its ``images/``) or the images folder itself."""
    folder = Path(path)
    if (folder / IMAGES_FOLDER).is_dir():
        folder = folder / IMAGES_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher image folder not found: {path} (an output folder of `tlcm eval`)")
    return folder


def _check_inputs(config: EvalConfig, count: int) -> tuple[dict, FeatureExtractor | None]:
    """Hash every weight and build the FID extractor before any image is made."""
    weights = {"model": weights_sha256(config.model, MODEL_HINT),
               "loras": [weights_sha256(path, LORA_HINT) for path, _ in config.loras]}
    if config.clip_model:
        from .clip_score import check_clip_folder
        check_clip_folder(config.clip_model)
        weights["clip"] = weights_sha256(config.clip_model, CLIP_WEIGHTS_HINT)
    if bool(config.aesthetic_clip) != bool(config.aesthetic_head):
        raise ValueError("AS needs both --aesthetic-clip (OpenAI CLIP ViT-L/14 folder) and --aesthetic-head "
                         "(sac+logos+ava1-l14-linearMSE.pth)")
    if config.aesthetic_head:
        from .aesthetic import AESTHETIC_CLIP_HINT, HEAD_HINT, check_aesthetic_inputs
        weights["aesthetic_clip"] = weights_sha256(config.aesthetic_clip, AESTHETIC_CLIP_HINT)
        weights["aesthetic_head"] = weights_sha256(config.aesthetic_head, HEAD_HINT)
        check_aesthetic_inputs(config.aesthetic_clip, config.aesthetic_head)
    if bool(config.image_reward) != bool(config.image_reward_tokenizer):
        raise ValueError("IR needs both --image-reward (ImageReward.pt) and --image-reward-tokenizer "
                         "(a bert-base-uncased tokenizer folder)")
    if config.image_reward:
        from .image_reward import REWARD_HINT, TOKENIZER_HINT, load_reward_tokenizer, load_reward_weights
        weights["image_reward"] = weights_sha256(config.image_reward, REWARD_HINT)
        weights["image_reward_tokenizer"] = weights_sha256(config.image_reward_tokenizer, TOKENIZER_HINT)
        load_reward_weights(config.image_reward)
        load_reward_tokenizer(config.image_reward_tokenizer)
    extractor = config.extractor
    if config.fid_reference or config.fid_teacher:
        if config.fid_reference:
            image_files(config.fid_reference)
        if config.fid_teacher:
            teacher = _teacher_folder(config.fid_teacher)
            missing = [image_path(teacher, i) for i in range(count) if not image_path(teacher, i).is_file()]
            if missing:
                raise FileNotFoundError(f"teacher image {missing[0]} not found ({len(missing)} of {count} missing): "
                                        "generate the teacher folder with the same --limit first")
        if extractor is None:
            if config.fid_weights:
                weights["fid_features"] = weights_sha256(config.fid_weights, FID_WEIGHTS_HINT)
            extractor = load_feature_extractor(config.fid_features, config.fid_weights,
                                               config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return weights, extractor


def _load_pipeline(config: EvalConfig, device: str | None, flux: bool):
    from ..generate import apply_loras, native_size
    from ..models.device import DTYPE_NAMES
    dtype = DTYPE_NAMES[config.dtype] if config.dtype else None
    if flux:
        from ..generate_flux import load_flux_pipeline
        pipe = load_flux_pipeline(config.model, device=device, dtype=dtype)
        width = height = pipe.default_sample_size * pipe.vae_scale_factor
    else:
        from ..models import load_sdxl_pipeline
        pipe = load_sdxl_pipeline(config.model, device=device, dtype=dtype, config=config.model_config)
        width, height = native_size(pipe)
    apply_loras(pipe, config.loras, alpha=config.lora_alpha)
    pipe.set_progress_bar_config(disable=True)
    return pipe, config.width or width, config.height or height


def _per_image(score, folder: Path, prompts: list[str], batch_size: int = 32) -> list[float]:
    """``score(images, prompts)`` batch by batch from disk: 5,000 decoded 1024² images would hold about 15 GB."""
    scores = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        scores += score(load_images(folder, range(start, start + len(batch))), batch)
    return scores


def _clip_metric(config: EvalConfig, folder: Path, prompts, device) -> dict:
    from .clip_score import ClipScorer
    scorer = ClipScorer.from_folder(config.clip_model, pretrained_tag=config.clip_pretrained, device=device)
    scores = _per_image(scorer.scores, folder, prompts)
    variant = scorer.variant
    return {"label": "CS", "value": statistics.fmean(scores), "per_image": scores, "variant": variant,
            "variant_text": f"{variant['model']} {variant['pretrained_tag']}".strip() + ", " + variant["score"]}


def _aesthetic_metric(config: EvalConfig, folder: Path, prompts, device) -> dict:
    from .aesthetic import AestheticScorer
    scorer = AestheticScorer.from_paths(config.aesthetic_clip, config.aesthetic_head, device=device)
    scores = _per_image(lambda images, _: scorer.scores(images), folder, prompts)
    variant = scorer.variant
    return {"label": "AS", "value": statistics.fmean(scores), "per_image": scores, "variant": variant,
            "variant_text": f"{variant['head']} on {variant['clip']}"}


def _image_reward_metric(config: EvalConfig, folder: Path, prompts, device) -> dict:
    from .image_reward import ImageRewardScorer
    scorer = ImageRewardScorer.from_paths(config.image_reward, config.image_reward_tokenizer, device=device)
    scores = _per_image(scorer.scores, folder, prompts)
    return {"label": "IR", "value": statistics.fmean(scores), "per_image": scores, "variant": scorer.variant,
            "variant_text": f"ImageReward v1.0 ({scorer.variant['weights']})"}


def _fid_metric(label: str, against: str, extractor, own, other_files) -> dict:
    value = fid_from_features(own, folder_features(extractor, other_files))
    return {"label": label, "value": value, "against": against, "reference_images": len(other_files),
            "features": extractor.name, "variant_text": f"{extractor.name}, against {against}, "
                                                         f"{len(own)} vs {len(other_files)} images"}


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    k, n = shard
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"--shard {k}/{n}: expected K/N with 0 <= K < N")
    return k, n


def launched_processes(device: str | None):
    """accelerate's process state when this runs under ``accelerate launch`` with several processes (each
    then makes its share of the images on its own device, and the main process scores them all); else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def run_evaluation(config: EvalConfig) -> dict | None:
    """Run the whole evaluation; returns the result written to ``<out>/eval.json``, or None in a process
    that only makes its shard of the images (``config.shard``, or a non-main process of a launch)."""
    from ..generate_flux import is_flux_folder
    flux = is_flux_folder(config.model)
    if flux and config.model_config:
        raise ValueError("--config describes a single-file SDXL checkpoint; a FLUX model is a diffusers folder")
    sampler: Sampler = parse_sampler(config.sampler).for_model(flux, config.flux_guidance)
    processes = launched_processes(config.device)
    if processes is not None and config.shard is not None:
        raise ValueError("--shard is for separate runs; under accelerate launch every process takes its shard")
    shard = check_shard(config.shard) if config.shard else (0, 1)
    device = config.device
    if processes is not None:
        shard = (processes.process_index, processes.num_processes)
        device = str(processes.device) if config.device != "cpu" else "cpu"
    prompts = _select_prompts(config.limit)
    weights, extractor = _check_inputs(config, len(prompts))
    out = Path(config.out)
    known = {"sampler": sampler.spec, "model_sha256": weights["model"],
             "loras": [{"sha256": h, "strength": s} for h, (_, s) in zip(weights["loras"], config.loras)]}
    known.update({k: v for k, v in (("width", config.width), ("height", config.height),
                                    ("guidance_embedding", sampler.guidance)) if v is not None})
    check_folder(out / IMAGES_FOLDER, prompts, config.seed, known)
    pipe, width, height = _load_pipeline(config, device, flux)
    network = denoiser(pipe)
    device, dtype = network.device, network.dtype
    run = {**known, "width": width, "height": height, "dtype": str(dtype).replace("torch.", "")}
    make = dict(out_dir=out / IMAGES_FOLDER, base_seed=config.seed, width=width, height=height, run=run,
                progress=config.progress and (processes is None or processes.is_main_process))
    records, generated = generate_set(pipe, prompts, sampler, shard=shard, **make)
    if processes is not None:
        processes.wait_for_everyone()
    if shard[1] > 1 and (processes is None or not processes.is_main_process):
        return None
    if shard[1] > 1:           # the main process of a launch: every shard is there (or made here if one failed)
        records, more = generate_set(pipe, prompts, sampler, **make)
        generated += more
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    metrics: dict[str, dict] = {}
    if config.clip_model:
        metrics["clip_score"] = _clip_metric(config, out / IMAGES_FOLDER, prompts, device)
    else:
        metrics["clip_score"] = {"label": "CS", "value": None, "not_computed": "no --clip-model given"}
    if config.aesthetic_head:
        metrics["aesthetic_score"] = _aesthetic_metric(config, out / IMAGES_FOLDER, prompts, device)
    else:
        metrics["aesthetic_score"] = {"label": "AS", "value": None,
                                      "not_computed": "no --aesthetic-clip / --aesthetic-head given"}
    if config.image_reward:
        metrics["image_reward"] = _image_reward_metric(config, out / IMAGES_FOLDER, prompts, device)
    else:
        metrics["image_reward"] = {"label": "IR", "value": None,
                                   "not_computed": "no --image-reward / --image-reward-tokenizer given"}
    own_features = None
    if extractor is not None:
        own_features = folder_features(extractor, [image_path(out / IMAGES_FOLDER, i) for i in range(len(prompts))])
    if config.fid_reference:
        metrics["fid"] = _fid_metric("FID", f"reference images in {Path(config.fid_reference).name}", extractor,
                                     own_features, image_files(config.fid_reference))
    else:
        metrics["fid"] = {"label": "FID", "value": None, "not_computed": "no --fid-reference folder given"}
    if config.fid_teacher:
        teacher = _teacher_folder(config.fid_teacher)
        metrics["fid_to_teacher"] = _fid_metric("FID-to-teacher", f"generated images in {config.fid_teacher}",
                                                extractor, own_features,
                                                [image_path(teacher, i) for i in range(len(prompts))])
    else:
        metrics["fid_to_teacher"] = {"label": "FID-to-teacher", "value": None,
                                     "not_computed": "no --fid-teacher folder given"}

    seconds = [r.seconds for r in records]
    evals = [r.unet_evals for r in records]
    result = {
        "format": RESULT_FORMAT, "tool": "tlcm eval",
        "model": {"path": str(config.model), "name": Path(config.model).name, "sha256": weights["model"],
                  "config": config.model_config, "family": "flux" if flux else "sdxl"},
        "loras": [{"path": str(p), "name": Path(p).name, "strength": s, "sha256": h}
                  for (p, s), h in zip(config.loras, weights["loras"])],
        "lora_alpha": config.lora_alpha,
        "sampler": {**sampler.describe(), "label": sampler.label},
        "prompts": {"set": PROMPT_SET, "rule": PROMPT_RULE, "list_sha256": PROMPTS_SHA256, "count": len(prompts),
                    "limit": config.limit, "selected_sha256": prompts_sha256(prompts)},
        "seeds": {"base": config.seed, "rule": "prompt index i uses seed base + i",
                  "first": config.seed, "last": config.seed + len(prompts) - 1},
        "size": {"width": width, "height": height},
        "timing": {"device": str(device), "dtype": run["dtype"], "median_seconds_per_image": statistics.median(seconds),
                   "mean_seconds_per_image": statistics.fmean(seconds), "seconds_per_image": seconds,
                   "median_unet_evals_per_image": statistics.median(evals), "unet_evals_total": sum(evals),
                   "note": "per image: text encoding + sampling + VAE decode, batch 1; resumed images keep the "
                           "time of the run that made them"},
        "images": {"folder": IMAGES_FOLDER, "count": len(records), "generated_this_run": len(generated),
                   "reused": len(records) - len(generated)},
        "weights_sha256": {k: v for k, v in weights.items() if k not in ("model", "loras")},
        "metrics": metrics,
    }
    write_results(out, result)
    return result
