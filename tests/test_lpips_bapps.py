"""BAPPS 2AFC reader on a tiny folder written here, its errors on broken folders, encoding to latents with
a (tiny) VAE, and the ``python -m tlcm_train.lpips`` CLI: synth / train / eval from images and from latents."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlcm_train.lpips.bapps import BappsError, encode_2afc, find_triplets, load_vae, vae_encoder
from tlcm_train.lpips.cli import load_2afc, main
from tlcm_train.lpips.model import load_latent_lpips
from tlcm_train.lpips.twoafc import TwoAFCLatents

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores


def write_subset(folder: Path, n: int, seed: int) -> list[float]:
    """A BAPPS-layout subset of ``n`` random triplets; returns the judges written."""
    rng = np.random.default_rng(seed)
    judges = rng.uniform(0, 1, n).round(3).tolist()
    for part in ("ref", "p0", "p1", "judge"):
        (folder / part).mkdir(parents=True)
    for i, judge in enumerate(judges):
        for part in ("ref", "p0", "p1"):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / part / f"{i:06d}.png")
        np.save(folder / "judge" / f"{i:06d}.npy", np.array([judge], dtype=np.float32))
    return judges


@pytest.fixture(scope="module")
def bapps(tmp_path_factory) -> tuple[Path, list[float]]:
    root = tmp_path_factory.mktemp("bapps") / "2afc" / "train"
    judges = write_subset(root / "cnn", 3, 0) + write_subset(root / "mix", 2, 1)
    return root, judges


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    from tlcm.testing.tiny import tiny_vae
    folder = tmp_path_factory.mktemp("vae")
    tiny_vae().save_pretrained(folder)
    return folder


def test_reads_a_folder_of_subsets_or_one_subset(bapps):
    root, judges = bapps
    triplets = find_triplets(root)
    assert len(triplets) == 5 and [t.ref.parent.parent.name for t in triplets] == ["cnn"] * 3 + ["mix"] * 2
    assert all(t.p0.name == t.ref.name and t.judge.name == t.ref.stem + ".npy" for t in triplets)
    assert len(find_triplets(root / "mix")) == 2


def test_encodes_images_to_scaled_vae_latents(bapps, vae_dir):
    root, judges = bapps
    vae = load_vae(vae_dir)
    data = encode_2afc(find_triplets(root), vae_encoder(vae), size=SIZE, batch_size=2)
    assert data.ref.shape == (5, 4, SIZE // 8, SIZE // 8) and data.p1.shape == data.ref.shape
    torch.testing.assert_close(data.judge, torch.tensor(judges))
    first = np.asarray(Image.open(root / "cnn" / "p0" / "000000.png"), dtype=np.float32)
    image = torch.from_numpy(first).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        expected = vae.encode(image).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(data.p0[:1], expected, atol=1e-5, rtol=1e-4)
    assert not torch.equal(data.p0, data.p1)


def test_broken_folders_fail_clearly(tmp_path):
    with pytest.raises(BappsError, match="not found"):
        find_triplets(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BappsError, match="no BAPPS 2AFC data"):
        find_triplets(tmp_path / "empty")
    write_subset(tmp_path / "a", 2, 0)
    (tmp_path / "a" / "p1" / "000001.png").unlink()
    with pytest.raises(BappsError, match=r"1 file\(s\) missing.*p1/000001.png"):
        find_triplets(tmp_path / "a")
    write_subset(tmp_path / "b", 1, 0)
    for f in (tmp_path / "b" / "judge").iterdir():
        f.unlink()
    (tmp_path / "b" / "judge").rmdir()
    with pytest.raises(BappsError, match="missing folder.*judge/"):
        find_triplets(tmp_path / "b")
    write_subset(tmp_path / "c", 1, 0)
    np.save(tmp_path / "c" / "judge" / "000000.npy", np.array([1.5]))
    (tmp_path / "c" / "p0" / "000000.png").write_bytes(b"not a png")
    with pytest.raises(BappsError, match="unreadable image"):
        encode_2afc(find_triplets(tmp_path / "c"), lambda x: x, size=SIZE)
    from tlcm_train.lpips.bapps import load_judge
    with pytest.raises(BappsError, match=r"one number in \[0, 1\]"):
        load_judge(tmp_path / "c" / "judge" / "000000.npy")
    with pytest.raises(ValueError, match="pass --vae"):
        load_2afc(tmp_path / "c", None, SIZE)
    with pytest.raises(FileNotFoundError, match="no diffusers VAE"):
        load_vae(tmp_path)
    with pytest.raises(ValueError, match="judge values must lie in"):
        TwoAFCLatents(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([2.0]))


def _printed(text: str, label: str) -> float:
    """The number the CLI printed after ``label``."""
    return float(text.split(label, 1)[1].split()[0].rstrip(";"))


def _agreement_by_hand(weights: Path, data: TwoAFCLatents) -> float:
    """BAPPS's 2AFC score written out: a pair scores ``judge`` when the model puts p1 closer to ref, ``1 - judge``
    when p0, half of each on a tie."""
    model = load_latent_lpips(weights)
    with torch.no_grad():
        d0, d1 = model(data.ref, data.p0).tolist(), model(data.ref, data.p1).tolist()
    scores = [j if b < a else 1 - j if a < b else 0.5 for a, b, j in zip(d0, d1, data.judge.tolist())]
    return sum(scores) / len(scores)


def test_cli_trains_from_images_then_from_precomputed_latents(bapps, vae_dir, tmp_path, capsys):
    """The saved latents are the VAE encodings of the images (by hand) with the judges written; training moves
    the weights off their seeded init; every printed agreement is the BAPPS score recomputed here."""
    from tlcm_train.lpips.model import LatentLPIPS, LatentLPIPSConfig
    root, judges = bapps
    latents, weights = tmp_path / "bapps_latents.safetensors", tmp_path / "llpips.safetensors"
    tiny = ["--widths", "4,4,8,8,8", "--steps", "3", "--batch-size", "4", "--size", str(SIZE)]
    assert main(["train", "--data", str(root), "--vae", str(vae_dir), "--out", str(weights),
                 "--save-latents", str(latents), *tiny]) == 0
    printed = capsys.readouterr().out
    model = load_latent_lpips(weights)
    assert model.config.widths == (4, 4, 8, 8, 8)
    saved = TwoAFCLatents.load(latents)
    torch.testing.assert_close(saved.judge, torch.tensor(judges))
    vae = load_vae(vae_dir)
    for part in ("ref", "p0", "p1"):
        files = [root / subset / part / f"{i:06d}.png" for subset, n in (("cnn", 3), ("mix", 2)) for i in range(n)]
        images = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32)).permute(2, 0, 1)
                              for f in files]) / 127.5 - 1
        with torch.no_grad():
            expected = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        torch.testing.assert_close(getattr(saved, part), expected, atol=1e-5, rtol=1e-4)
    torch.manual_seed(0)                                          # the CLI's --seed default, before it builds
    init = LatentLPIPS(LatentLPIPSConfig(4, (4, 4, 8, 8, 8), True)).state_dict()
    trained = model.state_dict()
    convs = [k for k, v in init.items() if k.startswith("trunk.") and v.ndim == 4]    # not BN statistics, not
    assert set(trained) == set(init) and len(convs) == 13                             # the clamped heads
    assert sum(not torch.equal(trained[k], init[k]) for k in convs) == len(convs)     # 3 Adam steps moved each
    assert _printed(printed, "train 2AFC agreement") == pytest.approx(_agreement_by_hand(weights, saved), abs=1e-4)

    assert main(["train", "--data", str(latents), "--out", str(weights), "--val", str(latents), *tiny]) == 0
    printed = capsys.readouterr().out
    by_hand = _agreement_by_hand(weights, saved)
    assert _printed(printed, "val 2AFC agreement") == pytest.approx(by_hand, abs=1e-4)
    assert main(["eval", "--weights", str(weights), "--data", str(latents)]) == 0
    printed = capsys.readouterr().out
    assert "on 5 pairs" in printed and _printed(printed, "2AFC agreement:") == pytest.approx(by_hand, abs=1e-4)
    assert by_hand != pytest.approx(0.5, abs=1e-3)                # else a swapped judge (1 - score) would pass


def test_cli_synth_from_an_image_folder_or_a_latent_tensor(bapps, vae_dir, tmp_path, capsys):
    """Every synthetic reference is one of the sources (VAE-encoded by hand for images), p0/p1 are distortions
    of it, and the judge follows the severities: with noise alone, a judge near 1 means p1 is the closer one."""
    root, _ = bapps
    out = tmp_path / "synth.safetensors"
    assert main(["synth", "--source", str(root / "cnn" / "ref"), "--vae", str(vae_dir), "--size", str(SIZE),
                 "--n", "7", "--kinds", "noise,blur", "--nuisance", "color", "--out", str(out)]) == 0
    from_images = TwoAFCLatents.load(out)
    assert len(from_images) == 7 and from_images.ref.shape[1:] == (4, SIZE // 8, SIZE // 8)
    vae = load_vae(vae_dir)
    sources = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32)).permute(2, 0, 1)
                           for f in sorted((root / "cnn" / "ref").glob("*.png"))]) / 127.5 - 1
    with torch.no_grad():
        encoded = vae.encode(sources).latent_dist.mean * vae.config.scaling_factor
    nearest = torch.cdist(from_images.ref.flatten(1), encoded.flatten(1)).min(dim=1).values
    assert nearest.max() < 1e-4 * encoded.flatten(1).norm(dim=1).min()
    assert ((from_images.p0 - from_images.ref).flatten(1).norm(dim=1) > 0).all()
    assert ((from_images.p1 - from_images.ref).flatten(1).norm(dim=1) > 0).all()

    from safetensors.torch import save_file
    source = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    save_file({"latents": source}, str(tmp_path / "latents.safetensors"))
    assert main(["synth", "--source", str(tmp_path / "latents.safetensors"), "--n", "6", "--out", str(out)]) == 0
    from_latents = TwoAFCLatents.load(out)
    assert from_latents.ref.shape == (6, 4, 8, 8) and "6 synthetic 2AFC triplets" in capsys.readouterr().out
    assert all(any(torch.equal(r, s) for s in source) for r in from_latents.ref)
    assert main(["synth", "--source", str(tmp_path / "latents.safetensors"), "--n", "40", "--kinds", "noise",
                 "--out", str(out)]) == 0
    noise = TwoAFCLatents.load(out)
    d0, d1 = ((noise.p0 - noise.ref).flatten(1).norm(dim=1), (noise.p1 - noise.ref).flatten(1).norm(dim=1))
    sure = (noise.judge - 0.5).abs() > 0.3                        # severities at least 0.07 apart (τ = 0.05)
    assert sure.sum() >= 20 and torch.equal((noise.judge > 0.5)[sure], (d1 < d0)[sure])
    with pytest.raises(ValueError, match="unknown or empty"):
        main(["synth", "--source", str(tmp_path / "latents.safetensors"), "--kinds", "sepia", "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="--source"):
        main(["synth", "--source", str(tmp_path / "nothing.pt"), "--out", str(out)])
