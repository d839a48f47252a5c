"""Prompt-embedding cache: encode every prompt a rank will see once, then free both text encoders.

Data-free training reads nothing but prompts, so the text encoders (≈0.8 B params for SDXL) are needed
only up front. Embeddings are kept on the CPU in float16 (308 KiB per SDXL prompt) and moved to the
device per batch.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .diffusion import Conditioning, sdxl_time_ids

CACHE_DTYPE = torch.float16


class PromptCache:
    """Embeddings of a subset of prompts, looked up by the prompt's index in the full list."""

    def __init__(self, indices: Sequence[int], embeds: torch.Tensor, pooled: torch.Tensor, resolution: int):
        self.rows = {int(i): row for row, i in enumerate(indices)}
        self.embeds, self.pooled, self.resolution = embeds, pooled, resolution

    def batch(self, indices: Sequence[int], device: torch.device) -> Conditioning:
        try:
            rows = torch.tensor([self.rows[int(i)] for i in indices])
        except KeyError as err:
            raise KeyError(f"prompt {err.args[0]} was not encoded on this rank") from None
        return Conditioning(self.embeds[rows].to(device, torch.float32), self.pooled[rows].to(device, torch.float32),
                            sdxl_time_ids(self.resolution, len(indices)).to(device))


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], indices: Sequence[int], resolution: int,
                   device: torch.device, chunk: int = 16) -> PromptCache:
    """Encode ``prompts[i]`` for each i in ``indices`` with the pipeline's two text encoders."""
    embeds, pooled = [], []
    for start in range(0, len(indices), chunk):
        texts = [prompts[i] for i in indices[start:start + chunk]]
        e, _, p, _ = pipe.encode_prompt(texts, device=device, num_images_per_prompt=1,
                                        do_classifier_free_guidance=False)
        embeds.append(e.to("cpu", CACHE_DTYPE))
        pooled.append(p.to("cpu", CACHE_DTYPE))
    return PromptCache(indices, torch.cat(embeds), torch.cat(pooled), resolution)


def unload_text_encoders(pipe) -> None:
    """Drop both text encoders from the pipeline so their memory can be freed (tokenizers are tiny)."""
    for name in ("text_encoder", "text_encoder_2"):
        setattr(pipe, name, None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
