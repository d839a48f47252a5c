"""The toy teacher: a tiny SDXL-architecture text-to-image model trained from scratch on the toy data.

Same classes as SDXL (text-time ``UNet2DConditionModel``, ``CLIPTextModel`` + ``CLIPTextModelWithProjection``
with SDXL's real CLIP BPE tokenizers, ``AutoencoderKL``, SDXL's scheduler config), so the trainer and every
host load it like SDXL. Design choices against docs/eval.md §7's failures:

* x2 AutoencoderKL (:mod:`tlcm_toy.vae`): 16x16x4 latents keep the 2-px textures;
* the text encoders are trained with the UNet (a frozen random CLIP left position at chance);
* prompt dropout to **zero** embeddings (10%), the unconditional input SDXL pipelines and the trainer use;
* the loss weighted in x0 space where SNR < 1, and a quarter of each batch drawn from t in [800, 999]: the
  quadrant must be laid out from the prompt at high noise, where the plain ε-loss weighs an x0 error by
  SNR (0.005 at t = 999) and a teacher trained with it leaves position at chance (docs/eval.md §7);
  min-SNR-5 weighting at low noise; an EMA of the UNet for a short CPU run;
* constant learning rate after warm-up, then a linear decay to a tenth over the last quarter of the steps.

Reproduce: ``python -m tlcm_toy.teacher --out tlcm_toy/weights/teacher`` (defaults = committed run; the
committed run trained the VAE first with ``python -m tlcm_toy.vae --out V`` and passed ``--vae V``, which runs
the same function with the same seed).
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlcm.schedules import make_alphas_cumprod

from .data import generate, prompts_for
from .vae import VAE_BATCH, VAE_STEPS, to_model, train_vae

RESOLUTION = 32
TEXT_WIDTH_1, TEXT_WIDTH_2 = 16, 32       # must differ: the single-file loader tells the encoders apart by width
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=RESOLUTION // 2, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 128), layers_per_block=1, transformer_layers_per_block=(1, 1, 1),
    attention_head_dim=(2, 4, 4), cross_attention_dim=TEXT_WIDTH_1 + TEXT_WIDTH_2, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=TEXT_WIDTH_2 + 6 * 256, norm_num_groups=32,
)
SCHEDULER_CONFIG: dict[str, Any] = dict(   # SDXL base 1.0's
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
    use_karras_sigmas=False, sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True, clip_sample=False,
)
PROMPT_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
HIGH_NOISE_SHARE, HIGH_NOISE_FROM = 0.25, 800     # a quarter of each batch from t in [800, 999]
DECAY_SHARE, FINAL_LR_SHARE = 0.25, 0.1           # the last quarter of the steps decays the lr to a tenth
WARMUP_STEPS = 100


def _text_config(width: int, act: str):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=TEXT_WIDTH_2,
                          hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)


def new_pipeline(vae, seed: int, scratch: Path):
    """An untrained SDXL pipeline around ``vae`` (seeded UNet and text encoders, SDXL's tokenizers)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tlcm.testing.tiny import tiny_tokenizers
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    te1 = CLIPTextModel(_text_config(TEXT_WIDTH_1, "quick_gelu"))
    te2 = CLIPTextModelWithProjection(_text_config(TEXT_WIDTH_2, "gelu"))
    tok1, tok2 = tiny_tokenizers(scratch)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                     tokenizer_2=tok2, unet=unet,
                                     scheduler=EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG))


def token_ids(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tokenizers' 77-token ids, as ``StableDiffusionXLPipeline.encode_prompt`` makes them."""
    return tuple(tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                     return_tensors="pt").input_ids for tok in (pipe.tokenizer, pipe.tokenizer_2))


def encode(pipe, ids1: torch.Tensor, ids2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate states of both encoders concatenated, pooled projection), differentiable; identical to
    ``encode_prompt`` with ``clip_skip=None``."""
    out1 = pipe.text_encoder(ids1, output_hidden_states=True)
    out2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    return torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1), out2.text_embeds


def encode_dataset(vae, n: int, seed: int, batch: int = 256) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Scaled VAE latents (one posterior draw) of ``n`` fresh images and their labels."""
    data = generate(n, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = [vae.encode(to_model(data.images[i:i + batch])).latent_dist.sample(gen)
                   for i in range(0, n, batch)]
    return torch.cat(latents) * vae.config.scaling_factor, data.labels


def loss_weights(alphas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Weights of the ε-loss per sample: 1/SNR where SNR < 1 (the loss in x0 space, so the layout decided at
    high noise counts), min(SNR, γ)/SNR above (min-SNR, Hang et al. 2023: the many easy low-noise steps do
    not dominate)."""
    snr = alphas[t] / (1.0 - alphas[t])
    return torch.where(snr < 1.0, 1.0 / snr, snr.clamp(max=MIN_SNR_GAMMA) / snr)


def sample_timesteps(batch: int, generator: torch.Generator, total: int = 1000) -> torch.Tensor:
    """Uniform timesteps, the first ``HIGH_NOISE_SHARE`` of the batch drawn from [HIGH_NOISE_FROM, total)."""
    t = torch.randint(0, total, (batch,), generator=generator)
    high = round(HIGH_NOISE_SHARE * batch)
    if high:
        t[:high] = torch.randint(HIGH_NOISE_FROM, total, (high,), generator=generator)
    return t


def learning_rate_factor(step: int, steps: int) -> float:
    """Linear warm-up, constant, then a linear decay to ``FINAL_LR_SHARE`` over the last ``DECAY_SHARE``."""
    decay_from = steps - round(DECAY_SHARE * steps)
    if step >= decay_from:
        return 1.0 - (1.0 - FINAL_LR_SHARE) * (step - decay_from + 1) / (steps - decay_from)
    return min(1.0, (step + 1) / WARMUP_STEPS)


def save_teacher(pipe, unet_ema, out: Path, meta: dict) -> None:
    """The diffusers folder with the EMA UNet, weights stored in fp16 (upcast on load) to fit the repo."""
    components = {name: copy.deepcopy(c) if isinstance(c, torch.nn.Module) else c
                  for name, c in dict(pipe.components, unet=unet_ema).items()}
    type(pipe)(**components).to(torch.float16).save_pretrained(out, safe_serialization=True)
    (out / "training.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def train(out: Path, steps: int, batch: int, lr: float, seed: int, n_latents: int, save_every: int,
          ema_decay: float, vae_path: str | None, log=print) -> None:
    from diffusers import AutoencoderKL
    out.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(vae_path) if vae_path else train_vae(VAE_STEPS, VAE_BATCH, seed, log=log)
    vae.eval().requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="toy-tok-") as scratch:
        pipe = new_pipeline(vae, seed, Path(scratch))
    latents, labels = encode_dataset(vae, n_latents, seed + 1)
    rng = np.random.default_rng(seed + 2)
    languages = rng.choice(np.array(["en", "zh"]), n_latents)
    ids1, ids2 = token_ids(pipe, prompts_for(labels, languages))
    unet, te1, te2 = pipe.unet, pipe.text_encoder, pipe.text_encoder_2
    for module in (unet, te1, te2):
        module.train()
    unet_ema = copy.deepcopy(unet).eval().requires_grad_(False)
    params = [*unet.parameters(), *te1.parameters(), *te2.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: learning_rate_factor(s, steps))
    alphas = make_alphas_cumprod().float()
    time_ids = torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]], dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 3)
    meta = dict(seed=seed, batch=batch, lr=lr, n_latents=n_latents, ema_decay=ema_decay,
                prompt_dropout=PROMPT_DROPOUT, min_snr_gamma=MIN_SNR_GAMMA, loss="x0 where SNR < 1, min-SNR above",
                high_noise_share=HIGH_NOISE_SHARE, high_noise_from=HIGH_NOISE_FROM, decay_share=DECAY_SHARE,
                final_lr_share=FINAL_LR_SHARE, total_steps=steps, vae_steps=VAE_STEPS, vae_batch=VAE_BATCH)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n_latents, (batch,), generator=gen)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = sample_timesteps(batch, gen, len(alphas))
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        embeds, pooled = encode(pipe, ids1[idx], ids2[idx])
        keep = (torch.rand(batch, generator=gen) >= PROMPT_DROPOUT).float()
        embeds, pooled = embeds * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
        pred = unet(zt, t, encoder_hidden_states=embeds,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(batch, 6)}).sample
        loss = (loss_weights(alphas, t) * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for e, p in zip(unet_ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        if step % 25 == 0:
            log(f"step {step} loss {loss.item():.4f} {(time.perf_counter() - start) / step:.2f} s/step", flush=True)
        if step % save_every == 0 or step == steps:
            save_teacher(pipe, unet_ema, out, dict(meta, steps=step,
                                                   train_seconds=round(time.perf_counter() - start)))
            log(f"saved step {step}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the toy SDXL-architecture teacher from scratch.")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=6400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-latents", type=int, default=20000)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--vae", default=None,
                        help="an AutoencoderKL folder from `python -m tlcm_toy.vae` (same defaults) instead of "
                             "training it here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    train(args.out, args.steps, args.batch, args.lr, args.seed, args.n_latents, args.save_every,
          args.ema_decay, args.vae)


if __name__ == "__main__":
    main()
