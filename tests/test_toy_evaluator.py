"""The committed frozen evaluator: reaches its recorded accuracy on fresh real images and its metrics
separate real from degraded sets."""
from __future__ import annotations

import json

import pytest

from tlcm_toy.data import generate
from tlcm_toy.evaluator import DEFAULT_WEIGHTS, evaluate_images, file_sha256, load_evaluator
from tlcm_toy.sanity import degraded_sets, score


@pytest.fixture(scope="module")
def evaluator():
    return load_evaluator()


def test_recorded_accuracy_is_reached_on_a_fresh_sample(evaluator):
    record = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert record["sha256"] == file_sha256(DEFAULT_WEIGHTS)     # the record belongs to these weights
    fresh = generate(500, seed=31_337)                            # a seed used nowhere else
    _, predicted = evaluate_images(evaluator, fresh.images)
    for name, labels in fresh.labels.items():
        accuracy = float((predicted[name] == labels).mean())
        assert accuracy >= record["accuracy"][name] - 0.03, (name, accuracy)
    assert record["accuracy"]["all"] >= 0.95


def test_metrics_separate_real_from_blurred_noisy_and_collapsed(evaluator):
    reference, _ = evaluate_images(evaluator, generate(400, seed=2_718).images)
    rows = {name: score(evaluator, reference, batch) for name, batch in degraded_sets(400, seed=99).items()}
    real = rows.pop("real (independent)")
    assert real["acc_all"] >= 0.9
    for name, row in rows.items():
        assert row["fd"] > 3 * real["fd"], name
        assert row["kid"] > 5 * max(real["kid"], 1e-4), name
    assert rows["blurred 3x3"]["acc_colour"] > 0.9          # blur keeps the colour: FD, not accuracy, sees it
    assert rows["collapsed (10 images)"]["acc_all"] > 0.8   # collapse keeps labels right: only FD/KID see it
