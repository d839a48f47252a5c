"""The toy teacher's AutoencoderKL: x2 downsampling, so 2-px textures survive the latent round trip.

docs/eval.md §7: an x4 AutoencoderKL lost the textures (32% texture accuracy on reconstructions). Here a
32x32x3 image maps to 16x16x4 (a 3:1 compression, not 8:1), trained on reconstruction (MSE + L1) with a
tiny KL weight, as SD's VAE is. Widths are 32/32: a 64-wide full-resolution decoder was ~30x slower
per step on the shared 2-core CPU. ``scaling_factor`` is set from the trained latents' std, as SDXL's was.
"""
from __future__ import annotations

from typing import Any

import torch

from .data import generate

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=32,
    sample_size=32, scaling_factor=1.0, force_upcast=False,
)
KL_WEIGHT = 1e-6
VAE_STEPS = 700
VAE_BATCH = 32


def new_vae(seed: int):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def to_model(images) -> torch.Tensor:
    """[0, 1] numpy images -> [-1, 1] tensors, the VAE's (and SDXL's) pixel range."""
    return torch.as_tensor(images) * 2.0 - 1.0


@torch.no_grad()
def reconstruct(vae, images, batch: int = 250):
    """Encode (posterior mode) and decode [0, 1] images: the ceiling any latent sampler can reach."""
    out = [vae.decode(vae.encode(to_model(images[i:i + batch])).latent_dist.mode()).sample
           for i in range(0, len(images), batch)]
    return ((torch.cat(out) + 1.0) / 2.0).clamp(0, 1).numpy()


def train_vae(steps: int, batch: int, seed: int, lr: float = 1e-3, log=print):
    """Train from scratch on fresh procedural batches (never repeats an image); returns the VAE in eval mode."""
    vae = new_vae(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(steps):
        x = to_model(generate(batch, seed * 1_000_003 + step).images)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 0.1 * (recon - x).abs().mean() \
            + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.5f}", flush=True)
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(to_model(generate(512, seed + 7).images)).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="Train the toy AutoencoderKL alone (the teacher script runs "
                                     "the same function with the same defaults).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=VAE_STEPS)
    parser.add_argument("--batch", type=int, default=VAE_BATCH)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    train_vae(args.steps, args.batch, args.seed).save_pretrained(args.out)


if __name__ == "__main__":
    main()
