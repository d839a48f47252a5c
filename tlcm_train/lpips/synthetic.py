"""Synthetic 2AFC sets: distort any images or latents and let the *severity* play the human judge.

For a reference x, p0 and p1 are distortions of x, each of a random kind and severity s ∈ [s_min, 1]
(s = 0 is the identity for every kind). The judgement is a soft label on severities,
judge = P(p1 closer) = sigmoid((s0 − s1) / τ), so pairs of near-equal severity are uncertain as human
votes are. Each kind's amplitude at s = 1 is set to be clearly visible yet not destroy the content, which
makes severities of different kinds roughly comparable — a calibration choice, not a measurement.
``nuisance`` kinds are applied on top to both p0 and p1 at independent random severities and **ignored**
by the judgement: changes the metric must learn to discount (as humans discount, e.g., a slight global
colour cast), which a random or pixel-space distance cannot.
Distortions act on (C, H, W) tensors of any channel count, so they apply to RGB images (then encoded with
the VAE: ``encode``) or directly to latents. Kinds (amplitudes relative to the sample's std σ):

- ``noise``: additive Gaussian noise, std 0.5 σ s
- ``blur``: Gaussian blur, kernel std 1.5 s pixels
- ``color``: a per-channel offset of norm 0.75 σ s (colour cast / latent channel shift)
- ``contrast``: scale around the mean by 1 − 0.6 s
- ``shift``: translation by round(s · size / 4) pixels in a random direction, edges replicated
- ``quantise``: JPEG-like, 4×4-block DCT coefficients rounded to steps 0.5 σ s (1 + u + v)
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn import functional as F

from .twoafc import TwoAFCLatents

Distortion = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
DCT_BLOCK = 4


def _std(x: torch.Tensor) -> torch.Tensor:
    return x.std().clamp_min(1e-6)


def add_noise(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    return x + 0.5 * s * _std(x) * torch.randn(x.shape, generator=g)


def blur(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    sigma = 1.5 * s
    if sigma < 1e-3:
        return x.clone()
    radius = max(1, math.ceil(2.5 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def colour_shift(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    direction = torch.randn(x.shape[0], generator=g)
    return x + 0.75 * s * _std(x) * (direction / direction.norm()).view(-1, 1, 1)


def contrast(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2), keepdim=True)
    return mean + (x - mean) * (1.0 - 0.6 * s)


def shift(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    k = round(s * min(x.shape[1:]) / 4)
    if k == 0:
        return x.clone()
    dy, dx = [int(v) * k for v in torch.randint(-1, 2, (2,), generator=g)]
    if dy == 0 and dx == 0:
        dx = k
    padded = F.pad(x[None], (k, k, k, k), mode="replicate")[0]
    h, w = x.shape[1:]
    return padded[:, k - dy:k - dy + h, k - dx:k - dx + w]


def _dct_matrix(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()           # orthonormal DCT-II


def quantise(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    c, h, w = x.shape
    if s < 1e-3:
        return x.clone()
    if h % DCT_BLOCK or w % DCT_BLOCK:
        raise ValueError(f"quantise: height and width must be multiples of {DCT_BLOCK}, got {h}x{w}")
    d = _dct_matrix(DCT_BLOCK)
    blocks = x.reshape(c, h // DCT_BLOCK, DCT_BLOCK, w // DCT_BLOCK, DCT_BLOCK).transpose(2, 3)
    coeffs = d @ blocks @ d.T
    u = torch.arange(DCT_BLOCK, dtype=x.dtype)
    step = 0.5 * s * _std(x) * (1 + u[:, None] + u[None, :])
    coeffs = torch.round(coeffs / step) * step
    return (d.T @ coeffs @ d).transpose(2, 3).reshape(c, h, w)


DISTORTIONS: dict[str, Distortion] = {"noise": add_noise, "blur": blur, "color": colour_shift,
                                      "contrast": contrast, "shift": shift, "quantise": quantise}


def distort(x: torch.Tensor, kind: str, severity: float, generator: torch.Generator) -> torch.Tensor:
    """One (C, H, W) sample distorted by ``kind`` at ``severity`` in [0, 1] (0 = unchanged)."""
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; choose from {', '.join(DISTORTIONS)}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return DISTORTIONS[kind](x.float(), severity, generator)


def make_synthetic_2afc(source: torch.Tensor, n: int, generator: torch.Generator, *,
                        kinds: tuple[str, ...] = tuple(DISTORTIONS), nuisance: tuple[str, ...] = (),
                        same_kind: float = 0.5, min_severity: float = 0.05, temperature: float = 0.05,
                        encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        batch_size: int = 64) -> TwoAFCLatents:
    """``n`` triplets from references drawn out of ``source`` (N, C, H, W); with ``same_kind`` probability p1
    gets p0's kind (a pure magnitude comparison). ``encode`` maps (distorted) images to latents in batches."""
    if source.dim() != 4 or len(source) == 0:
        raise ValueError(f"source must be a non-empty (N, C, H, W) tensor, got {tuple(source.shape)}")
    unknown = [k for k in (*kinds, *nuisance) if k not in DISTORTIONS]
    if unknown or not kinds:
        raise ValueError(f"kinds/nuisance: unknown or empty {unknown or kinds}; choose from {', '.join(DISTORTIONS)}")
    if n < 1 or not 0 <= min_severity < 1 or temperature <= 0:
        raise ValueError("need n >= 1, 0 <= min_severity < 1 and temperature > 0")
    refs, p0s, p1s, sev = [], [], [], []
    for _ in range(n):
        ref = source[int(torch.randint(len(source), (1,), generator=generator))].float()
        k0 = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
        k1 = k0 if float(torch.rand(1, generator=generator)) < same_kind else \
            kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
        s0, s1 = (min_severity + (1 - min_severity) * torch.rand(2, generator=generator)).tolist()
        refs.append(ref)
        for out, kind, severity in ((p0s, k0, s0), (p1s, k1, s1)):
            x = distort(ref, kind, severity, generator)
            for extra in nuisance:
                x = distort(x, extra, float(torch.rand(1, generator=generator)), generator)
            out.append(x)
        sev.append((s0, s1))
    s = torch.tensor(sev)
    judge = torch.sigmoid((s[:, 0] - s[:, 1]) / temperature)

    def stacked(xs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(xs)
        if encode is None:
            return x
        with torch.no_grad():
            return torch.cat([encode(x[i:i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)])
    return TwoAFCLatents(stacked(refs), stacked(p0s), stacked(p1s), judge)
