"""CLIP score (CS): 100 × cos(image embedding, text embedding) per image, averaged, from a local CLIP.

The backbone sets the scale (docs/eval.md §1: OpenCLIP ViT-g/14 is the convention of the range TLCM's
33.68 falls in), so the result records the model, the weights' hashes, the pretrained tag the user names
and the preprocessing. The model runs as a transformers ``CLIPModel``: open_clip would be the usual loader,
but importing it needs torchvision, which the diffusers stack here does not carry. A folder is either in
the transformers layout (``config.json``, safetensors weights, tokenizer files: e.g.
``laion/CLIP-ViT-g-14-laion2B-s12B-b42K``) or in open_clip's (``open_clip_config.json``,
``open_clip_model.safetensors``, tokenizer files: ``laion/CLIP-ViT-g-14-laion2B-s34B-b88K`` ships only
this), whose tensors ``open_clip_weights`` renames. No per-sample clamp at 0 is applied.

Preprocessing is done here rather than by a transformers image processor, so it is the same on every
transformers version: shortest side resized to the model's input size (PIL bicubic), centre crop, scaled to
[0, 1], normalised with the folder's ``image_mean``/``image_std`` (OpenAI CLIP's by default). That is the
open_clip / CLIP evaluation transform.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..models.dtype_argument import dtype_argument
from .open_clip_weights import CONFIG_FILE as OPEN_CLIP_CONFIG
from .open_clip_weights import is_open_clip_folder, load_open_clip

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_HINT = ("a CLIP folder from huggingface.co in the transformers layout (config.json, model.safetensors, "
             "tokenizer files; e.g. laion/CLIP-ViT-g-14-laion2B-s12B-b42K) or open_clip's (open_clip_config.json, "
             "open_clip_model.safetensors, tokenizer files; e.g. laion/CLIP-ViT-g-14-laion2B-s34B-b88K)")


def check_clip_folder(folder: str | Path) -> Path:
    """``FileNotFoundError`` naming the missing file when ``folder`` is not a usable local CLIP."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not is_open_clip_folder(folder):
        raise FileNotFoundError(f"CLIP model not found: {folder / 'config.json'} (or {OPEN_CLIP_CONFIG}) is "
                                f"missing; pass {CLIP_HINT}")
    if not list(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"CLIP weights not found: no *.safetensors in {folder}; pass {CLIP_HINT} "
                                "(pickled .bin weights are not loaded)")
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        raise FileNotFoundError(f"CLIP tokenizer not found: {folder / 'vocab.json'} (or tokenizer.json) is "
                                f"missing; pass {CLIP_HINT}")
    return folder


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def clip_pixels(images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP's evaluation transform as torchvision composes it: shortest side to ``size`` (PIL bicubic, the
    long side ``int(size * long / short)`` as ``Resize`` computes it), centre crop, [0, 1], normalised;
    (batch, 3, size, size) float32."""
    batch = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        short, long = min(w, h), max(w, h)
        resized = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
        image = image.resize(resized, Image.Resampling.BICUBIC)
        image = image.crop(center_crop_box(*image.size, size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        batch.append((array - np.array(mean, np.float32)) / np.array(std, np.float32))
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


@dataclass
class ClipScorer:
    model: object
    tokenizer: object
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    variant: dict

    @classmethod
    def from_folder(cls, folder: str | Path, *, pretrained_tag: str = "", device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> "ClipScorer":
        from transformers import AutoTokenizer, CLIPModel, CLIPTokenizer
        folder = check_clip_folder(folder)
        mean, std = OPENAI_MEAN, OPENAI_STD
        if is_open_clip_folder(folder):
            model, own_mean, own_std = load_open_clip(folder, dtype)
            mean, std = own_mean or mean, own_std or std
            tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
            loader = "transformers.CLIPModel from open_clip's layout (tlcm.evaluation.open_clip_weights)"
        else:
            model = CLIPModel.from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                              **dtype_argument("transformers", dtype))
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            loader = "transformers.CLIPModel (open_clip needs torchvision)"
            pre = folder / "preprocessor_config.json"
            if pre.is_file():
                config = json.loads(pre.read_text(encoding="utf-8"))
                mean, std = tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))
        model = model.to(device).eval().requires_grad_(False)
        image_size = int(model.config.vision_config.image_size)
        variant = {
            "loader": loader,
            "model": folder.name, "pretrained_tag": pretrained_tag, "dtype": str(dtype).replace("torch.", ""),
            "preprocessing": (f"shortest side to {image_size} (PIL bicubic), centre crop {image_size}, "
                              f"[0, 1], normalise mean {list(mean)} std {list(std)}"),
            "text": f"tokenizer of the folder, truncated to {model.config.text_config.max_position_embeddings} tokens",
            "score": "100 * cos(image, text) per image, mean over images, no clamp at 0",
        }
        return cls(model, tokenizer, image_size, mean, std, torch.device(device), variant)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return clip_pixels(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The projected (not normalised) image embeddings, one row per image, float32."""
        pixels = self.pixel_values(images).to(self.device, next(self.model.parameters()).dtype)
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output).float()

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int = 16) -> list[float]:
        """100 × cos per (image, prompt) pair."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        model = self.model
        out = []
        for start in range(0, len(images), batch_size):
            tokens = self.tokenizer(list(prompts[start:start + batch_size]), padding=True, truncation=True,
                                    max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
            image = self.image_embeddings(images[start:start + batch_size])
            text = model.text_projection(model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                                          attention_mask=tokens["attention_mask"].to(self.device)
                                                          ).pooler_output)
            cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
            out += (100.0 * cos).tolist()
        return out
