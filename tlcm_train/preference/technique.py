"""TLCM's preference loss (Eq. 11) as a :class:`~tlcm_train.technique.Technique`: one auxiliary term on x̂0.

The term decodes the student's x̂0 with the VAE and scores it with a frozen scorer (MPS, or the toy
scorer) against its own prompt (must reach the margin s0) and against an unrelated prompt (must stay at
or below 0). The unrelated prompt is the batch's next prompt (prompts rolled by one), as cheap as it gets
and unrelated for data-free prompt lists. A repeated prompt must not become its own negative (the two
hinges would then pull one score both ways): the next *different* prompt is taken instead. A sample whose
batch holds no other prompt (batch size 1 per process, the SDXL case) draws its negative from the
training prompt list (``negative_pool``) with the training generator, so the negative hinge stays active
and runs resume exactly; without a pool it gets the positive hinge only. Prompts that differ only in
wording (the toy world's en/zh pairs) are still paired. Nothing here is trained: the term only passes a
gradient to the student.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from ..aux_grad import AuxTerm, Logged
from ..technique import AuxBatch
from .decode import crop_window, decode_latents
from .scorer import DEFAULT_MARGIN, Scorer, hinge_preference_loss


def unrelated_pairs(prompts: list[str]) -> list[tuple[int, int]]:
    """(sample, negative) index pairs: the negative is the next prompt of the batch (cyclically) that
    differs from the sample's own; a sample whose batch has no other prompt gets none."""
    n = len(prompts)
    pairs = []
    for i, own in enumerate(prompts):
        j = next(((i + k) % n for k in range(1, n) if prompts[(i + k) % n] != own), None)
        if j is not None:
            pairs.append((i, j))
    return pairs


POOL_DRAWS = 8     # tries to draw a pool prompt that differs from the sample's own


def draw_negative(own: str, pool: list[str], generator: torch.Generator) -> str | None:
    """A prompt of ``pool`` other than ``own``, drawn uniformly with ``generator`` (None if none differs)."""
    for _ in range(POOL_DRAWS):
        candidate = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        if candidate != own:
            return candidate
    return next((p for p in pool if p != own), None)


class PreferenceTechnique:
    name = "mps"

    def __init__(self, vae: torch.nn.Module, scorer: Scorer, *, margin: float = DEFAULT_MARGIN,
                 weight: float = 1.0, decode_checkpoint: str = "unit", decode_dtype: torch.dtype | None = None,
                 decode_crop: int = 0, negative_pool: list[str] | None = None):
        """``decode_dtype`` other than the VAE's own decodes with a copy in that dtype (the shared VAE
        stays as the sample grids need it); ``decode_crop`` > 0 decodes a random latent window of that
        side (tlcm_train/preference/decode.py)."""
        vae = vae.requires_grad_(False)
        self.vae = vae if decode_dtype in (None, vae.dtype) else copy.deepcopy(vae).to(dtype=decode_dtype)
        self.scorer = scorer
        if isinstance(scorer, torch.nn.Module):
            scorer.requires_grad_(False)
        self.margin, self.weight = margin, weight
        self.decode_checkpoint, self.decode_crop = decode_checkpoint, decode_crop
        self.negative_pool = list(negative_pool or [])

    def negatives(self, prompts: list[str], generator: torch.Generator) -> list[str | None]:
        """Each sample's unrelated prompt: the batch's next different one, else one from the pool."""
        found: list[str | None] = [None] * len(prompts)
        for i, j in unrelated_pairs(prompts):
            found[i] = prompts[j]
        if self.negative_pool:
            found = [neg if neg is not None else draw_negative(own, self.negative_pool, generator)
                     for own, neg in zip(prompts, found)]
        return found

    def loss(self, x0: torch.Tensor, prompts: list[str], negatives: list[str | None] | None = None) -> torch.Tensor:
        """Eq. 11 on latents ``x0``; positives and negatives are scored in one scorer call on the images
        decoded once. ``negatives`` (one per sample, None = none) default to the in-batch ones."""
        if negatives is None:
            negatives = [None] * len(prompts)
            for i, j in unrelated_pairs(prompts):
                negatives[i] = prompts[j]
        pairs = [(i, neg) for i, neg in enumerate(negatives) if neg is not None]
        has_negative = torch.tensor([i for i, _ in pairs], dtype=torch.long, device=x0.device)
        self.vae.to(x0.device)          # the loop parks the shared VAE on the CPU between sample grids
        images = decode_latents(self.vae, x0, checkpoint=self.decode_checkpoint)
        scores = self.scorer(torch.cat([images, images[has_negative]]),
                             list(prompts) + [neg for _, neg in pairs]).float()
        positive, negative = scores[:len(prompts)], scores[len(prompts):]
        # samples without a negative contribute max(0, 0) = 0 to the negative hinge
        return hinge_preference_loss(positive, torch.zeros_like(positive).index_put((has_negative,), negative),
                                     margin=self.margin)

    def terms(self, batch: AuxBatch) -> list[AuxTerm]:
        prompts = list(batch.prompts)
        rows = cols = slice(None)
        if self.decode_crop:        # drawn once per step from the training generator: resumes exactly
            rows, cols = crop_window(*batch.x0.shape[-2:], self.decode_crop, batch.generator)
        negatives = self.negatives(prompts, batch.generator)
        # logged as loss/preference: "mps" is the stage's own consistency loss
        return [AuxTerm("preference", lambda x0d: self.loss(x0d[..., rows, cols], prompts, negatives),
                        weight=self.weight)]

    def update(self, batch: AuxBatch) -> Logged:
        return {}

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the preference technique trains nothing; refusing a non-empty state {sorted(state)[:5]}")
