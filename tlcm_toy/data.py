"""Procedural compositional images: shape x colour x texture x quadrant, with exact labels and prompts.

Why procedural: unlimited, exactly labelled, and the 2-px textures are fine detail that few-step samplers
blur (docs/eval.md §7), while MNIST saturates at 2 steps (§6). Each image is one shape of one colour and
texture inside one quadrant of a dark canvas; size, offset, stripe orientation, pattern phase and
brightness are jittered (unlabelled) so the real distribution has spread for FD/KID. Generation is
vectorised and a pure function of the seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
TEXTURES = ("solid", "striped", "checkered", "dotted")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": COLOURS, "texture": TEXTURES, "position": POSITIONS}

RGB = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.15, 0.25, 0.95], [0.95, 0.9, 0.1]], dtype=np.float32)
BACKGROUND = 0.08
OFF_LEVEL = 0.3          # texture "off" pixels keep 30% of the colour, so colour stays readable
PERIOD = 4               # 2-px on / 2-px off: detail an x2 latent can hold, a blurry sample cannot

ZH = {
    "shape": ("圆形", "正方形", "三角形"),
    "colour": ("红色", "绿色", "蓝色", "黄色"),
    "texture": ("纯色", "条纹", "格子", "圆点"),
    "position": ("左上角", "右上角", "左下角", "右下角"),
}
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Batch:
    """Images in [0, 1], (N, 3, SIZE, SIZE) float32, and integer labels per attribute, (N,) each."""
    images: np.ndarray
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def prompt(shape: int, colour: int, texture: int, position: int, language: str = "en") -> str:
    """'a red striped circle at the top left' / '左上角的红色条纹圆形'."""
    if language == "en":
        return f"a {COLOURS[colour]} {TEXTURES[texture]} {SHAPES[shape]} at the {POSITIONS[position]}"
    if language == "zh":
        return f"{ZH['position'][position]}的{ZH['colour'][colour]}{ZH['texture'][texture]}{ZH['shape'][shape]}"
    raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


def prompts_for(labels: dict[str, np.ndarray], languages: np.ndarray | str = "en") -> list[str]:
    """One prompt per labelled sample; ``languages`` is one code or one per sample."""
    n = len(labels["shape"])
    langs = np.broadcast_to(np.asarray(languages), (n,))
    return [prompt(int(labels["shape"][i]), int(labels["colour"][i]), int(labels["texture"][i]),
                   int(labels["position"][i]), str(langs[i])) for i in range(n)]


def random_labels(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Independent uniform labels for every attribute."""
    return {name: rng.integers(0, len(values), n) for name, values in ATTRIBUTES.items()}


def _shape_masks(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    circle = dx ** 2 + dy ** 2 <= radius ** 2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.85
    triangle = (dy <= radius * 0.8) & (np.abs(dx) * 2.0 <= dy + radius)   # apex up, base at the bottom
    return np.select([shape == 0, shape == 1], [circle, square], triangle)


def _texture_masks(texture: np.ndarray, yy: np.ndarray, xx: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """True where the texture is "on"; coordinates already include the random phase."""
    half = PERIOD // 2
    rows, cols = (yy % PERIOD) < half, (xx % PERIOD) < half
    stripes = np.where(vertical, cols, rows)
    checker = rows ^ cols
    dots = ~(rows & cols)   # dark 2x2 dots on the colour
    return np.select([texture == 0, texture == 1, texture == 2], [np.ones_like(rows), stripes, checker], dots)


def render(labels: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Images (N, 3, SIZE, SIZE) for given labels; the jitter comes from ``rng``."""
    n = len(labels["shape"])
    col = lambda a: a.reshape(n, 1, 1)  # noqa: E731 - broadcasting helper
    quadrant = labels["position"]
    centre_x = 8.0 + 16.0 * (quadrant % 2) + rng.uniform(-1.5, 1.5, n)
    centre_y = 8.0 + 16.0 * (quadrant // 2) + rng.uniform(-1.5, 1.5, n)
    radius = rng.uniform(5.5, 7.0, n)
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    dx = grid.reshape(1, 1, SIZE) - col(centre_x)
    dy = grid.reshape(1, SIZE, 1) - col(centre_y)
    inside = _shape_masks(col(labels["shape"]), dx, dy, col(radius))
    iy = np.arange(SIZE).reshape(1, SIZE, 1) + col(rng.integers(0, PERIOD, n))
    ix = np.arange(SIZE).reshape(1, 1, SIZE) + col(rng.integers(0, PERIOD, n))
    on = _texture_masks(col(labels["texture"]), iy, ix, col(rng.random(n) < 0.5))
    colour = RGB[labels["colour"]] * rng.uniform(0.85, 1.0, (n, 1)).astype(np.float32)     # (N, 3)
    level = np.where(on, 1.0, OFF_LEVEL).astype(np.float32)
    fg = colour.reshape(n, 3, 1, 1) * level[:, None]
    images = np.where(inside[:, None], fg, np.float32(BACKGROUND))
    return images.astype(np.float32)


def generate(n: int, seed: int) -> Batch:
    """``n`` labelled images, a pure function of (n, seed)."""
    rng = np.random.default_rng(seed)
    labels = random_labels(n, rng)
    return Batch(render(labels, rng), labels)


def write_prompts(path: str | Path, n: int, seed: int, languages: tuple[str, ...] = LANGUAGES) -> Path:
    """Prompts for the trainer, uniform over attributes and ``languages``: ``.txt`` (one a line) or
    ``.jsonl`` (``{"prompt", "language", <attribute>: <value>}``, labels kept for evaluation)."""
    path = Path(path)
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"prompts file must end in .txt or .jsonl, got {path.name!r}")
    rng = np.random.default_rng(seed)
    labels = random_labels(n, rng)
    langs = rng.choice(np.asarray(languages), n)
    texts = prompts_for(labels, langs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            if path.suffix == ".txt":
                f.write(text + "\n")
            else:
                row = {"prompt": text, "language": str(langs[i]),
                       **{k: ATTRIBUTES[k][int(v[i])] for k, v in labels.items()}}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
