"""Latent LPIPS end to end at SDXL's latent layout: a BAPPS-layout folder of 64 px images (BAPPS's patch
size), encoded by a VAE with SDXL's layout (4 latent channels, 8x downsampling: 8x8 latents, scaling factor
0.13025; the tiny kit's VAE), trained with ``python -m tlcm_train.lpips train`` until it fits the judges
better than the untrained network, evaluated on held-out triplets, and then used as the consistency
distance of a training run.

What this proves is the recipe's plumbing at SDXL's shapes. It does not show that the learnt metric
generalises: at a few hundred triplets it barely does (held-out agreement measured 0.66 -> 0.69 while the
training agreement went 0.66 -> 0.78); LPIPS learns from the whole BAPPS 2AFC training set."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlcm.testing.build import build_tiny_sdxl
from tlcm_train.config import load_config
from tlcm_train.lpips.cli import main as lpips_cli
from tlcm_train.lpips.model import LatentLPIPS, LatentLPIPSConfig, save_latent_lpips
from tlcm_train.loop import Trainer

SIZE = 64                    # BAPPS patches
WIDTHS = "8,16,16,32,32"

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_image(rng: np.random.Generator) -> np.ndarray:
    """A smooth colour field (a 4x4 grid of random colours, bilinear to 64 px), float in [0, 1]."""
    grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(grid, dtype=np.float32) / 255


def write_bapps(folder: Path, n: int, seed: int) -> None:
    """BAPPS layout (ref, p0, p1, judge): p0 and p1 are the reference with a colour cast of two different
    strengths (a change that survives the VAE's 8x downsampling); the judge (the fraction preferring p1)
    follows which one is less distorted."""
    rng = np.random.default_rng(seed)
    for part in ("ref", "p0", "p1", "judge"):
        (folder / part).mkdir(parents=True)
    for i in range(n):
        ref = smooth_image(rng)
        sigmas = rng.uniform(0.02, 0.35, 2)
        for part, sigma in (("p0", sigmas[0]), ("p1", sigmas[1])):
            direction = rng.normal(0, 1, 3)
            direction -= direction.mean()           # chromatic: judged
            grey = rng.uniform(-0.25, 0.25)         # a brightness change the judge ignores
            noisy = np.clip(ref + sigma * direction / np.linalg.norm(direction) + grey, 0, 1)
            Image.fromarray((noisy * 255).round().astype(np.uint8)).save(folder / part / f"{i:06d}.png")
        Image.fromarray((ref * 255).round().astype(np.uint8)).save(folder / "ref" / f"{i:06d}.png")
        judge = 1 / (1 + np.exp(-(sigmas[0] - sigmas[1]) / 0.03))      # p1 preferred when p0 is noisier
        np.save(folder / "judge" / f"{i:06d}.npy", np.array([judge], dtype=np.float32))


def agreement(text: str, label: str) -> float:
    return float(re.search(rf"{label}\s*2AFC agreement:? ([0-9.]+)", text).group(1))


def test_train_evaluate_and_distil_with_latent_lpips_on_sdxl_layout_latents(tmp_path, capsys):
    paths = build_tiny_sdxl(tmp_path / "kit")
    vae = str(Path(paths.diffusers) / "vae")
    write_bapps(tmp_path / "bapps" / "train" / "cast", 600, seed=1)
    write_bapps(tmp_path / "bapps" / "val" / "cast", 150, seed=2)
    latents = tmp_path / "train_latents.safetensors"

    torch.manual_seed(0)
    untrained = save_latent_lpips(LatentLPIPS(LatentLPIPSConfig(4, tuple(int(w) for w in WIDTHS.split(",")))),
                                  tmp_path / "untrained.safetensors")
    for split in ("train", "val"):
        assert lpips_cli(["eval", "--weights", str(untrained), "--data", str(tmp_path / "bapps" / split),
                          "--vae", vae]) == 0
    before_train, before_val = (agreement(line, "") for line in capsys.readouterr().out.splitlines())

    weights = tmp_path / "llpips.safetensors"
    assert lpips_cli(["train", "--data", str(tmp_path / "bapps" / "train"), "--vae", vae, "--out", str(weights),
                      "--save-latents", str(latents), "--val", str(tmp_path / "bapps" / "val"), "--widths", WIDTHS,
                      "--steps", "200", "--batch-size", "32", "--lr", "1e-4"]) == 0
    printed = capsys.readouterr().out
    after_train, after_val = agreement(printed, "train"), agreement(printed, "val")
    from tlcm_train.lpips.twoafc import TwoAFCLatents
    assert tuple(TwoAFCLatents.load(latents).ref.shape[1:]) == (4, 8, 8)       # SDXL's layout at 64 px
    assert after_train > before_train + 0.05, (before_train, after_train)      # it learns the judges
    assert after_val > 0.6, (before_val, after_val)                              # above chance held out

    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\n")
    config = load_config(None, [
        f"model.path={paths.diffusers}", f"data.prompts=[{tmp_path / 'prompts.txt'}]", "lora.rank=4",
        "lora.target_modules=[to_q, to_k, to_v, to_out.0]", "distill.num_segments=4",
        "distill.distance=latent_lpips", f"distill.lpips_weights={weights}", "mlcd.steps=2", "lcd.steps=1",
        "mps.steps=0", "dm.steps=0", "train.resolution=64", "train.batch_size=2", f"output.dir={tmp_path / 'run'}",
        "output.sample_every=0", "output.checkpoint_every=0", "output.formats=[peft]"])
    result = Trainer(config).run()
    assert result.state == "finished" and len(result.losses) == 3
    assert all(np.isfinite(result.losses)) and all(loss > 0 for loss in result.losses)
