"""Latent LPIPS: architecture and distance properties, learning from synthetic 2AFC judgements, weights
files, and its use as the trainer's ``latent_lpips`` distance on the tiny kit UNet. Seconds on a CPU."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from tlcm_train.lpips.model import LatentLPIPS, LatentLPIPSConfig, load_latent_lpips, save_latent_lpips
from tlcm_train.lpips.synthetic import DISTORTIONS, distort, make_synthetic_2afc
from tlcm_train.lpips.train import train_lpips, two_afc_agreement

TINY = LatentLPIPSConfig(widths=(8, 8, 16, 16, 16))


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores


def smooth_latents(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """Spatially correlated 4-channel fields: a stand-in for VAE latents of natural images."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 4, 4, 4, generator=g), size=size, mode="bilinear", align_corners=False)


def test_vgg16_layout_with_three_pools_removed():
    full = LatentLPIPS()
    convs = [m for m in full.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and convs[0].in_channels == 4 and convs[-1].out_channels == 512
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in full.trunk.modules()) == 13
    assert 14e6 < sum(p.numel() for p in full.parameters()) < 16e6         # VGG16-BN on 4 channels ≈ 15 M
    taps = LatentLPIPS(TINY).trunk(torch.randn(2, 4, 16, 12))
    assert [tuple(t.shape) for t in taps] == [(2, 8, 16, 12), (2, 8, 16, 12), (2, 16, 16, 12), (2, 16, 16, 12),
                                              (2, 16, 8, 6)]             # one max-pool left, before block 5
    with pytest.raises(ValueError, match="five positive block widths"):
        LatentLPIPSConfig(widths=(8, 8))


def test_distance_is_zero_on_equal_inputs_symmetric_and_non_negative():
    torch.manual_seed(0)
    model = LatentLPIPS(TINY).eval()
    with torch.no_grad():
        for head in model.heads:                                 # arbitrary non-negative heads
            head.weight.copy_(torch.rand_like(head.weight))
    x, y = smooth_latents(6, 1), smooth_latents(6, 2)
    d = model(x, y)
    assert d.shape == (6,) and bool((d > 0).all())
    assert torch.equal(model(x, x), torch.zeros(6))
    torch.testing.assert_close(model(y, x), d)
    assert model.layer_distances(x, y).shape == (6, 5) and bool((model.layer_distances(x, y) >= 0).all())
    with pytest.raises(ValueError, match="expects two"):
        model(x, y[:, :3])
    with torch.no_grad():
        model.heads[0].weight.fill_(-1.0)
    model.clamp_heads_()
    assert float(model.heads[0].weight.min()) == 0.0


def test_distortions_are_identity_at_zero_and_grow_with_severity():
    g = torch.Generator().manual_seed(0)
    x = smooth_latents(1, 3, size=16)[0]
    for kind in DISTORTIONS:
        assert torch.allclose(distort(x, kind, 0.0, g), x), kind
        changes = [float((distort(x, kind, s, torch.Generator().manual_seed(1)) - x).norm()) for s in (0.3, 1.0)]
        assert 0 < changes[0] < changes[1], (kind, changes)
    with pytest.raises(ValueError, match="unknown distortion"):
        distort(x, "sepia", 0.5, g)
    with pytest.raises(ValueError, match="severity"):
        distort(x, "noise", 1.5, g)


def test_training_on_synthetic_2afc_raises_agreement_and_orders_magnitudes(capsys):
    """Judges rank noise severity and ignore a random colour cast on top: the untrained distance is misled
    by the cast, the trained one learns to discount it (held-out references)."""
    g = torch.Generator().manual_seed(0)
    refs = smooth_latents(160, 4)
    train_set = make_synthetic_2afc(refs[:128], 768, g, kinds=("noise",), nuisance=("color",))
    held_out = make_synthetic_2afc(refs[128:], 384, g, kinds=("noise",), nuisance=("color",))
    torch.manual_seed(0)
    model = LatentLPIPS(TINY)
    before = two_afc_agreement(model, held_out)
    losses = train_lpips(model, train_set, steps=40, batch_size=32, lr=1e-3, generator=torch.Generator().manual_seed(1))
    after = two_afc_agreement(model, held_out)
    with capsys.disabled():
        print(f"\n2AFC agreement on held-out synthetic pairs: untrained {before:.3f} -> trained {after:.3f}")
    assert after > 0.85 and after > before + 0.05, (before, after)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert all(float(h.weight.min()) >= 0 for h in model.heads)

    x = smooth_latents(16, 5)
    for kind in ("noise", "blur", "quantise"):
        mild = torch.stack([distort(xi, kind, 0.2, torch.Generator().manual_seed(i)) for i, xi in enumerate(x)])
        strong = torch.stack([distort(xi, kind, 0.8, torch.Generator().manual_seed(i)) for i, xi in enumerate(x)])
        assert bool((model(x, strong) > model(x, mild)).all()), kind


def test_weights_file_roundtrip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    model = LatentLPIPS(TINY).eval()
    path = save_latent_lpips(model, tmp_path / "llpips.safetensors")
    loaded = load_latent_lpips(path)
    x, y = smooth_latents(2, 6), smooth_latents(2, 7)
    assert loaded.config == TINY and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded(x, y), model(x, y).detach())
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_latent_lpips(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a latent LPIPS file"):
        load_latent_lpips(tmp_path / "other.safetensors")
    with torch.no_grad():
        model.heads[2].weight.fill_(-0.1)
    with pytest.raises(ValueError, match="negative LPIPS head"):
        load_latent_lpips(save_latent_lpips(model, tmp_path / "negative.safetensors"))


def test_latent_lpips_as_the_stage1_distance(tmp_path):
    from tlcm.testing.tiny import CROSS_ATTENTION_DIM, TEXT_WIDTH_2, tiny_unet
    from tlcm_train.adapters import add_student, require_student_active, student_parameters
    from tlcm_train.config import ConfigError, LoraConfig, load_config
    from tlcm_train.consistency import consistency_loss
    from tlcm_train.diffusion import Conditioning, Denoiser, sdxl_time_ids
    from tlcm_train.losses import build_distance
    from tlcm_train.stage1_mlcd import MlcdStage

    torch.manual_seed(0)
    weights = save_latent_lpips(LatentLPIPS(TINY), tmp_path / "llpips.safetensors")
    base = ["model.path=/m", "data.prompts=[p]", "distill.num_segments=4", "distill.distance=latent_lpips", "mps.steps=0",
            "dm.steps=0"]
    with pytest.raises(ConfigError, match="distill.lpips_weights: required"):
        load_config(None, base)
    with pytest.raises(FileNotFoundError, match="latent LPIPS weights not found"):
        build_distance(load_config(None, [*base, f"distill.lpips_weights={tmp_path / 'nope.safetensors'}"]).distill)
    cfg = load_config(None, [*base, f"distill.lpips_weights={weights}"])

    unet = tiny_unet()
    add_student(unet, LoraConfig(rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.enable_gradient_checkpointing()
    unet.train()
    den = Denoiser(unet, dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon"), torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    cond = Conditioning(torch.randn(2, 77, CROSS_ATTENTION_DIM, generator=g), torch.randn(2, TEXT_WIDTH_2, generator=g),
                        sdxl_time_ids(64, 2))
    loss = consistency_loss(MlcdStage(cfg.distill, cfg.mlcd, (4, 8, 8)), den, cond, build_distance(cfg.distill), g)
    assert loss.dim() == 0 and float(loss) > 0
    require_student_active(unet)
    loss.backward()
    params = student_parameters(unet)
    assert all(p.grad is not None for p in params)
    assert all(float(p.grad.abs().sum()) > 0 for n, p in unet.named_parameters() if "lora_B.student" in n)
    assert all(p.grad is None for n, p in unet.named_parameters() if ".student." not in n)


def test_lin_training_keeps_the_pretrained_trunk_and_learns_the_heads(tmp_path):
    """LPIPS 'lin': from saved weights, only the heads move (batch-norm statistics included); the CLI
    refuses --lin without a trunk to start from."""
    from tlcm_train.lpips import cli
    g = torch.Generator().manual_seed(0)
    refs = smooth_latents(96, 4)
    data = make_synthetic_2afc(refs, 256, g, kinds=("noise",), nuisance=("color",))
    torch.manual_seed(0)
    init = save_latent_lpips(LatentLPIPS(TINY).eval(), tmp_path / "init.safetensors")
    data_path = data.save(tmp_path / "data.safetensors")
    out = tmp_path / "lin.safetensors"
    assert cli.main(["train", "--data", str(data_path), "--init", str(init), "--lin", "--steps", "20",
                     "--batch-size", "32", "--lr", "1e-2", "--out", str(out)]) == 0
    before, after = load_latent_lpips(init), load_latent_lpips(out)
    trunk_before, trunk_after = before.trunk.state_dict(), after.trunk.state_dict()
    assert all(torch.equal(trunk_before[k], trunk_after[k]) for k in trunk_before)      # running stats too
    assert any(not torch.equal(a.weight, b.weight) for a, b in zip(before.heads, after.heads))
    with pytest.raises(SystemExit, match="--lin trains the heads on a pretrained trunk"):
        cli.main(["train", "--data", str(data_path), "--lin", "--steps", "1", "--out", str(out)])
