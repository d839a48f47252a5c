"""BAPPS 2AFC reader on a tiny folder written here, its errors on broken folders, encoding to latents with
a (tiny) VAE, and the ``python -m train.lpips`` CLI: synth / train / eval from images and from latents."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.lpips.bapps import BappsError, encode_2afc, find_triplets, load_vae, vae_encoder
from train.lpips.cli import load_2afc, main
from train.lpips.model import load_latent_lpips
from train.lpips.twoafc import TwoAFCLatents

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
    from train.lpips.bapps import load_judge
    with pytest.raises(BappsError, match=r"one number in \[0, 1\]"):
        load_judge(tmp_path / "c" / "judge" / "000000.npy")
    with pytest.raises(ValueError, match="pass --vae"):
        load_2afc(tmp_path / "c", None, SIZE)
    with pytest.raises(FileNotFoundError, match="no diffusers VAE"):
        load_vae(tmp_path)
    with pytest.raises(ValueError, match="judge values must lie in"):
        TwoAFCLatents(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor([2.0]))


def test_cli_trains_from_images_then_from_precomputed_latents(bapps, vae_dir, tmp_path, capsys):
    root, _ = bapps
    latents, weights = tmp_path / "bapps_latents.safetensors", tmp_path / "llpips.safetensors"
    tiny = ["--widths", "4,4,8,8,8", "--steps", "3", "--batch-size", "4", "--size", str(SIZE)]
    assert main(["train", "--data", str(root), "--vae", str(vae_dir), "--out", str(weights),
                 "--save-latents", str(latents), *tiny]) == 0
    assert "train 2AFC agreement" in capsys.readouterr().out
    assert load_latent_lpips(weights).config.widths == (4, 4, 8, 8, 8) and len(TwoAFCLatents.load(latents)) == 5
    assert main(["train", "--data", str(latents), "--out", str(weights), "--val", str(latents), *tiny]) == 0
    assert "val 2AFC agreement" in capsys.readouterr().out
    assert main(["eval", "--weights", str(weights), "--data", str(latents)]) == 0
    assert "on 5 pairs" in capsys.readouterr().out


def test_cli_synth_from_an_image_folder_or_a_latent_tensor(bapps, vae_dir, tmp_path, capsys):
    root, _ = bapps
    out = tmp_path / "synth.safetensors"
    assert main(["synth", "--source", str(root / "cnn" / "ref"), "--vae", str(vae_dir), "--size", str(SIZE),
                 "--n", "7", "--kinds", "noise,blur", "--nuisance", "color", "--out", str(out)]) == 0
    from_images = TwoAFCLatents.load(out)
    assert len(from_images) == 7 and from_images.ref.shape[1:] == (4, SIZE // 8, SIZE // 8)
    from safetensors.torch import save_file
    save_file({"latents": torch.randn(5, 4, 8, 8)}, str(tmp_path / "latents.safetensors"))
    assert main(["synth", "--source", str(tmp_path / "latents.safetensors"), "--n", "6", "--out", str(out)]) == 0
    assert TwoAFCLatents.load(out).ref.shape == (6, 4, 8, 8) and "6 synthetic 2AFC triplets" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown or empty"):
        main(["synth", "--source", str(tmp_path / "latents.safetensors"), "--kinds", "sepia", "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="--source"):
        main(["synth", "--source", str(tmp_path / "nothing.pt"), "--out", str(out)])
