"""FID: the Fréchet distance between Gaussian fits of two image sets' features, with a pluggable extractor.

The distance is computed here (float64): ``|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1^½ S2 S1^½)^½)``, the
last trace from the eigenvalues of a symmetric PSD matrix (it equals ``tr sqrtm(S1 S2)``, without the
complex round-off of a general ``sqrtm``). The features are another matter: the FID convention is the
2048-d pool features of the TF-Inception network of ``pytorch-fid`` / ``clean-fid``, whose usual packages
need torchvision, and whose weights are not bundled. So the extractor is a plugin, named as
``module:factory``; ``factory(weights, device)`` returns an object with ``name`` (recorded in the result)
and ``__call__(images) -> (n, d) array``. The default plugin is that network written out in plain torch
(:mod:`tlcm.evaluation.inception`), on pytorch-fid's weight file. A result names the extractor and hashes its weights; numbers from
different extractors do not compare.

Two uses, labelled apart: against a folder of real reference images (COCO val2017 photos) it is FID;
against another generated folder (the teacher's samples for the same prompts and seeds) it is
FID-to-teacher, fidelity to the teacher rather than realism (docs/eval.md §1).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BUILT_IN_FEATURES = "tlcm.evaluation.inception:fid_inception"      # the default: pytorch-fid's Inception


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (rows are samples), float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}")
    root1 = _sqrt_psd(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_cross = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_cross)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def load_feature_extractor(spec: str, weights: str | None = None, device: str = "cpu") -> FeatureExtractor:
    """Import ``module:factory`` and build the extractor; a bad spec or missing weight file is a user error."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--fid-features {spec!r}: expected MODULE:FACTORY (a callable (weights, device) -> extractor)")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"FID feature weights not found: {weights}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--fid-features {spec!r}: cannot import it ({err})") from None
    return factory(weights, device)


def image_files(folder: str | Path) -> list[Path]:
    """The images of a reference folder, sorted by name; an error if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ValueError(f"{folder} holds {len(files)} images; FID needs at least 2")
    return files


def folder_features(extractor: FeatureExtractor, files: Sequence[Path], batch_size: int = 32) -> np.ndarray:
    chunks = []
    for start in range(0, len(files), batch_size):
        images = []
        for path in files[start:start + batch_size]:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        chunks.append(np.asarray(extractor(images), dtype=np.float64))
    return np.concatenate(chunks)
