"""The procedural toy data: deterministic, labels recoverable from the pixels, prompts in both languages."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tlcm_toy import data
from tlcm_toy.data import ATTRIBUTES, BACKGROUND, generate, prompt, prompts_for, write_prompts


def test_generation_is_a_pure_function_of_the_seed():
    a, b, c = generate(64, 3), generate(64, 3), generate(64, 4)
    assert np.array_equal(a.images, b.images)
    assert all(np.array_equal(a.labels[k], b.labels[k]) for k in ATTRIBUTES)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (64, 3, data.SIZE, data.SIZE) and a.images.dtype == np.float32
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0


def _labels_from_pixels(image: np.ndarray) -> dict[str, int]:
    """Recompute every attribute of one image from its pixels alone."""
    fg = np.abs(image - BACKGROUND).max(0) > 1e-6
    ys, xs = np.nonzero(fg)
    position = int(ys.mean() >= data.SIZE / 2) * 2 + int(xs.mean() >= data.SIZE / 2)
    brightest = image[:, fg].max(1)
    colour = int(np.argmax(data.RGB @ brightest / np.linalg.norm(data.RGB, axis=1)))
    box = fg[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    fill = box.mean()
    shape = 1 if fill > 0.9 else 2 if fill < 0.65 else 0
    on = (image.max(0) > 0.6 * brightest.max()) & fg
    on_share = on[fg].mean()
    def agreement(dy: int, dx: int) -> float:   # share of shape pixels whose (dy, dx) neighbour has the same state
        h, w = data.SIZE - dy, data.SIZE - dx
        both = fg[:h, :w] & fg[dy:, dx:]
        return float((on[:h, :w] == on[dy:, dx:])[both].mean())
    if on_share > 0.99:
        texture = 0
    elif max(agreement(0, 1), agreement(1, 0)) > 0.95:      # stripes: constant along one axis
        texture = 1
    elif agreement(0, 2) + agreement(2, 0) < 0.4:          # checker: flips every 2 px both ways
        texture = 2
    else:
        texture = 3
    return dict(shape=shape, colour=colour, texture=texture, position=position)


def test_labels_match_the_pixels():
    batch = generate(400, 11)
    for i in range(len(batch)):
        expected = {k: int(v[i]) for k, v in batch.labels.items()}
        assert _labels_from_pixels(batch.images[i]) == expected, i


def test_every_attribute_value_occurs():
    batch = generate(2000, 0)
    for name, values in ATTRIBUTES.items():
        assert set(np.unique(batch.labels[name])) == set(range(len(values))), name


def test_prompts_in_english_and_chinese():
    assert prompt(0, 0, 1, 0) == "a red striped circle at the top left"
    assert prompt(0, 0, 1, 0, "zh") == "左上角的红色条纹圆形"
    assert prompt(2, 3, 3, 3, "zh") == "右下角的黄色圆点三角形"
    with pytest.raises(ValueError):
        prompt(0, 0, 0, 0, "fr")
    labels = {k: np.array([1, 2]) for k in ATTRIBUTES}
    assert prompts_for(labels, np.array(["en", "zh"])) == [
        "a green striped square at the top right", "左下角的蓝色格子三角形"]
    english = {prompt(s, c, t, p) for s in range(3) for c in range(4) for t in range(4) for p in range(4)}
    chinese = {prompt(s, c, t, p, "zh") for s in range(3) for c in range(4) for t in range(4) for p in range(4)}
    assert len(english) == len(chinese) == 3 * 4 * 4 * 4      # every combination has its own prompt


def test_prompt_files(tmp_path):
    txt = write_prompts(tmp_path / "p.txt", 200, seed=1).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in write_prompts(tmp_path / "p.jsonl", 200, seed=1).read_text(
        encoding="utf-8").splitlines()]
    assert len(txt) == len(rows) == 200
    assert txt == [r["prompt"] for r in rows]                    # same seed, same prompts in both formats
    assert {r["language"] for r in rows} == {"en", "zh"}
    for r in rows:
        labels = {k: np.array([ATTRIBUTES[k].index(r[k])]) for k in ATTRIBUTES}
        assert prompts_for(labels, r["language"]) == [r["prompt"]]
    with pytest.raises(ValueError, match="txt or .jsonl"):
        write_prompts(tmp_path / "p.csv", 5, seed=1)
