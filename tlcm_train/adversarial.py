"""Adversarial term (TLCM Eq. 13) with a discriminator on the base UNet's encoder.

D = the base UNet run only through conv_in, the down blocks and the mid block, plus one small trainable
head per down/mid feature map giving patch logits. The encoder is frozen by default (adapters disabled,
PCM's choice; the paper does not say); with ``backbone="lora"`` a LoRA ``disc`` on it trains with the
heads, at the memory of a backward through the encoder in each discriminator step (after PCM's SDXL
discriminator, Apache-2.0, G-U-N/Phased-Consistency-Model, code/text_to_image_sdxl/discriminator_sdxl.py;
own code). Losses on the patch logits D, each averaged over patches and heads: by default the standard
GAN loss of Eq. 13, log-sigmoid form: D minimises softplus(−D(real)) + softplus(D(fake)) (= −log σ(D(real))
− log(1 − σ(D(fake)))), the student softplus(−D(fake)) (= −log σ(D(fake)), Eq. 13's −log D(z̃0) term, the
non-saturating generator loss); with ``loss="hinge"`` PCM's hinge losses: D minimises relu(1 − D(real)) +
relu(1 + D(fake)), the student −D(fake). "Fake" is the student's one-step x̂0 (Eq. 13's z̃0); "real" are, by
default, teacher samples, CFG-DDIM from the same z_t (the issue's reading), or with ``real="rollout"``
Eq. 13 taken literally: the student's own multi-step rollout ẑ0 that z_t diffuses. Both are re-noised
to t' ~ U[t_min, t_max] before D (the paper does not give t'; PCM re-noises within a phase, TLCM's x̂0
is the clean end, so t' is small).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlcm.lora import TLCM_TARGET_SUFFIXES

from .adapters import add_side_adapter, adapter_state, teacher_mode
from .aux_grad import AuxTerm, Logged
from .config import DISC_BACKBONES, GAN_LOSSES, GAN_REAL
from .consistency import randint, randn
from .diffusion import Conditioning, Denoiser
from .teacher import even_path, teacher_solve
from .technique import AuxBatch, rollout_of
from .trainables import Sync, load_trainable_state, optimizer_step, trainable_state


DISC = "disc"


class _EncoderDone(Exception):
    """Raised by the mid block's hook: the up blocks are never run (memory and time)."""


def encoder_features(denoiser: Denoiser, z: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
    """The output of each down block and of the mid block, in the current adapter state.

    Forward hooks plus an early exit keep diffusers' own forward (embeddings, conditioning, LoRA scaling)
    instead of re-implementing it; diffusers' gradient checkpointing sits inside the blocks, so the hooks
    fire once, in the forward.
    """
    unet, features = denoiser.unet, []

    def keep(module, args, output):
        features.append(output[0] if isinstance(output, tuple) else output)

    def stop(module, args, output):
        keep(module, args, output)
        raise _EncoderDone

    handles = [block.register_forward_hook(keep) for block in unet.down_blocks]
    handles.append(unet.mid_block.register_forward_hook(stop))
    try:
        denoiser.model_output(z, t, cond)
    except _EncoderDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(features) != len(handles):
        raise RuntimeError(f"expected {len(handles)} encoder feature maps, got {len(features)}: the UNet's forward "
                           "does not run down_blocks then mid_block")
    return features


def encoder_modules(unet: nn.Module, suffixes: list[str]) -> list[str]:
    """Full names of the modules in the down and mid blocks that end in one of ``suffixes`` (PEFT's rule):
    the only ones the discriminator runs, so a backbone LoRA elsewhere would never train."""
    def wanted(name: str) -> bool:
        return name.startswith(("down_blocks.", "mid_block.")) and any(
            name == s or name.endswith("." + s) for s in suffixes)
    names = [name for name, _ in unet.named_modules() if wanted(name)]
    if not names:
        raise ValueError(f"gan backbone lora: no module of the UNet's down/mid blocks ends in {list(suffixes)}")
    return names


class PatchHead(nn.Module):
    """1×1 conv–GroupNorm–LeakyReLU, one residual block of the same, 1×1 conv → one logit per position."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        groups = math.gcd(32, width)

        def block(c_in: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, width, 1), nn.GroupNorm(groups, width), nn.LeakyReLU(0.2))

        self.inp, self.res, self.out = block(channels), block(width), nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.res(h))


class Adversarial:
    """The ``gan`` technique: the student's generator term and one discriminator (heads) step per student step."""

    name = "gan"

    def __init__(self, denoiser: Denoiser, *, lr: float = 1e-4, weight: float = 1.0, guidance_scale: float = 8.0,
                 teacher_steps: int = 4, t_min: int = 0, t_max: int = 250, head_width: int | None = None,
                 real: str = "teacher", loss: str = "standard", backbone: str = "frozen", backbone_rank: int = 16,
                 backbone_alpha: float = 16.0, target_modules: list[str] | None = None, sync: Sync | None = None):
        """``head_width`` None: each head as wide as its feature map (PCM; ≈7.6 M parameters on SDXL)."""
        unet = denoiser.unet
        if not 0 <= t_min <= t_max < denoiser.num_train_timesteps:
            raise ValueError(f"gan needs 0 <= t_min <= t_max < {denoiser.num_train_timesteps}, got {t_min}, {t_max}")
        if teacher_steps < 1:
            raise ValueError(f"gan teacher_steps must be >= 1, got {teacher_steps}")
        if real not in GAN_REAL:
            raise ValueError(f"gan real must be one of {GAN_REAL}, got {real!r}")
        if loss not in GAN_LOSSES:
            raise ValueError(f"gan loss must be one of {GAN_LOSSES}, got {loss!r}")
        if backbone not in DISC_BACKBONES:
            raise ValueError(f"gan backbone must be one of {DISC_BACKBONES}, got {backbone!r}")
        self.real, self.loss = real, loss
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("the adversarial discriminator needs a UNet with a mid block")
        self.denoiser, self.weight, self.guidance_scale = denoiser, weight, guidance_scale
        self.teacher_steps, self.t_min, self.t_max, self.sync = teacher_steps, t_min, t_max, sync
        channels = list(unet.config.block_out_channels)
        channels.append(channels[-1])                  # the mid block keeps the last down block's width
        self.heads = nn.ModuleList(PatchHead(c, head_width or c) for c in channels).to(denoiser.alphas.device)
        self._named = dict(self.heads.named_parameters())
        self.backbone_adapter = None                   # the frozen base: adapters disabled
        if backbone == "lora":
            self.backbone_adapter = DISC
            encoder = encoder_modules(unet, target_modules or TLCM_TARGET_SUFFIXES)
            self._named.update(add_side_adapter(unet, DISC, backbone_rank, backbone_alpha, encoder))
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=lr)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self._named.values())

    def logits(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> list[torch.Tensor]:
        """Patch logits of each head for x0 re-noised to t (the UNet in the current adapter state)."""
        return self._score(encoder_features(self.denoiser, self.denoiser.add_noise(x0, noise, t), t, cond))

    def _score(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(f.float()) for head, f in zip(self.heads, features)]

    def _renoise(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = randint(self.t_min, self.t_max, x0.shape[0], generator, x0.device)
        return randn(tuple(x0.shape), generator, x0), t

    def generator_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The student's loss on one head's patch logits of its own samples."""
        return F.softplus(-logits).mean() if self.loss == "standard" else -logits.mean()

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The heads' loss on one head's patch logits of real and fake samples."""
        if self.loss == "standard":
            return F.softplus(-real).mean() + F.softplus(fake).mean()
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def terms(self, batch: AuxBatch) -> list[AuxTerm]:
        """One term ``gan``: the generator loss of D(x̂0) through the backbone in its own adapter state,
        gradient wrt x̂0 only."""
        noise, t = self._renoise(batch.x0, batch.generator)

        def loss(x: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.generator_loss(s) for s in self.logits(x, noise, t, batch.cond)]).mean()

        return [AuxTerm("gan", loss, weight=self.weight,
                        state=lambda: adapter_state(self.denoiser.unet, self.backbone_adapter))]

    def real_samples(self, batch: AuxBatch) -> torch.Tensor:
        """The rollout ẑ0, or the teacher's x̂0 from the student's input z_t at t: ``teacher_steps`` equal
        CFG-DDIM steps toward 0, the last one read as the teacher's x̂0 (a DDIM move to t = 0 would stop at
        ᾱ_0 < 1)."""
        if self.real == "rollout":
            return rollout_of(batch, "gan real=rollout").detach().float()
        den, t = self.denoiser, batch.t
        path = even_path(t, torch.zeros_like(t), self.teacher_steps, self.teacher_steps)
        z = teacher_solve(den, batch.z_t.float(), path[:, :-1], batch.cond, self.guidance_scale)
        with teacher_mode(den.unet):
            return den.predict_cfg(z, path[:, -2], batch.cond, self.guidance_scale)[0]

    def update(self, batch: AuxBatch) -> Logged:
        """One discriminator step; real and fake share t' and noise (a paired comparison), inputs detached.
        A frozen backbone runs without grad, so only the heads' small graph is kept; a LoRA backbone
        runs, and is backpropagated, inside its own adapter state (with checkpointing the recomputation
        must see that state)."""
        den, cond = self.denoiser, batch.cond
        real, fake = self.real_samples(batch), batch.x0.detach().float()
        noise, t = self._renoise(fake, batch.generator)
        both = Conditioning(*(torch.cat([c, c]) for c in (cond.embeds, cond.pooled, cond.time_ids)))
        x, noise, t = torch.cat([real, fake]), torch.cat([noise, noise]), torch.cat([t, t])
        z = den.add_noise(x, noise, t)
        if self.backbone_adapter is None:
            with teacher_mode(den.unet):
                features = encoder_features(den, z, t, both)
            with torch.enable_grad():
                loss, pairs = self._backward(features)
        else:
            with adapter_state(den.unet, self.backbone_adapter), torch.enable_grad():
                loss, pairs = self._backward(encoder_features(den, z, t, both))
        d_real = torch.stack([r.mean() for r, _ in pairs]).mean()
        d_fake = torch.stack([f.mean() for _, f in pairs]).mean()
        optimizer_step(self.parameters(), self.optimizer, self.sync)
        return {"gan/d_loss": loss.detach(), "gan/d_real": d_real.detach(), "gan/d_fake": d_fake.detach()}

    def _backward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The discriminator loss of [real; fake] features, mean over heads, backpropagated."""
        pairs = [s.chunk(2) for s in self._score(features)]
        loss = torch.stack([self.discriminator_loss(r, f) for r, f in pairs]).mean()
        loss.backward()
        return loss, pairs

    def state_dict(self) -> dict[str, Any]:
        return trainable_state(self.name, self._named, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state(self.name, self._named, self.optimizer, state)
