"""The committed toy latent-LPIPS weights (``train/toy/weights/lpips.safetensors``, made by
``python -m train.toy.lpips_weights``): they load, beat plain latent L2 on a fresh held-out toy 2AFC set
(new image and pair seed, built here in the toy teacher's latent space), and serve as the trainer's
``latent_lpips`` distance."""
from __future__ import annotations

import json

import pytest
import torch

from train.lpips.model import load_latent_lpips
from train.lpips.synthetic import make_synthetic_2afc
from train.lpips.train import two_afc_agreement
from train.toy.lpips_weights import HELD_OUT_SEED, TRAIN_SEED, WEIGHTS, agreement, sq_l2

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: shared cores
FRESH_SEED = 61_003                                  # neither the training nor the recorded held-out seed
FRESH_REFS, FRESH_PAIRS = 64, 256


@pytest.fixture(scope="module")
def model():
    return load_latent_lpips(WEIGHTS)


def test_weights_are_small_narrow_and_documented(model):
    assert WEIGHTS.stat().st_size <= 2_000_000
    facts = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert model.config.in_channels == 4 and list(model.config.widths) == facts["widths"]
    assert facts["held_out_agreement"]["trained"] > facts["held_out_agreement"]["latent_l2"]
    assert FRESH_SEED not in (TRAIN_SEED, HELD_OUT_SEED)


def test_beats_latent_l2_on_fresh_held_out_toy_pairs(model, capsys):
    from train.lpips.bapps import load_vae, vae_encoder
    from train.toy.bench_teacher import DEFAULT_TEACHER
    from train.toy.data import generate
    from train.toy.vae import to_model

    encode = vae_encoder(load_vae(DEFAULT_TEACHER))
    source = to_model(generate(FRESH_REFS, FRESH_SEED).images)
    data = make_synthetic_2afc(source, FRESH_PAIRS, torch.Generator().manual_seed(FRESH_SEED), encode=encode,
                               batch_size=256)
    assert tuple(data.ref.shape[1:]) == (4, 16, 16)
    trained, l2 = two_afc_agreement(model, data), agreement(sq_l2, data)
    with capsys.disabled():
        print(f"\ntoy 2AFC agreement on {FRESH_PAIRS} fresh pairs: latent LPIPS {trained:.3f}, latent L2 {l2:.3f}")
    assert trained > l2 + 0.01, (trained, l2)


def test_is_the_trainers_latent_lpips_distance():
    from train.config import load_config
    from train.losses import build_distance

    cfg = load_config(None, ["model.path=/m", "data.prompts=[p]", "distill.distance=latent_lpips",
                             f"distill.lpips_weights={WEIGHTS}", "mps.weight=0"])
    distance = build_distance(cfg.distill)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    assert float(distance(x, x.clone())) == 0.0
    prediction = x.clone().requires_grad_(True)
    d = distance(prediction, y)
    assert d.dim() == 0 and float(d) > 0
    d.backward()
    assert prediction.grad is not None and bool(torch.isfinite(prediction.grad).all())
    assert float(prediction.grad.abs().sum()) > 0
