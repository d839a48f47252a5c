"""Latent LPIPS (TLCM §4): a VGG16-style trunk on 4-channel latents with LPIPS linear heads.

The trunk follows VGG16(-BN) with the first three max-pools removed, so a 128² SDXL latent keeps enough
resolution for five feature taps (conv1_2 … conv5_3; only the pool before block 5 remains). The distance is
LPIPS's (Zhang et al. 2018, re-implemented here): per tap, unit-normalise features over channels, square
the difference, weight channels with a learned **non-negative** 1×1 head, average over space, and sum the
taps. Hence d(x, x) = 0, d(x, y) = d(y, x) and d ≥ 0 by construction whenever the heads are non-negative
(:meth:`LatentLPIPS.clamp_heads_` keeps them so during training; loading refuses negative heads).
Widths are configurable so tests and the toy use a narrow copy of the same architecture.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

VGG16_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (64, 128, 256, 512, 512)
POOLED_BLOCK = 4        # VGG16 pools after every block; pools 1-3 are removed, pool 4 (before block 5) stays
EPS = 1e-10


@dataclass(frozen=True)
class LatentLPIPSConfig:
    in_channels: int = 4
    widths: tuple[int, ...] = VGG16_WIDTHS      # one per VGG block (five taps)
    batch_norm: bool = True                     # VGG16-BN, as E-LatentLPIPS and TLCM's trunk

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if len(self.widths) != len(VGG16_CONVS_PER_BLOCK) or min(self.widths) < 1:
            raise ValueError(f"widths: five positive block widths expected (VGG16), got {self.widths}")


def _block(in_ch: int, out_ch: int, convs: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class LatentVGG(nn.Module):
    """VGG16 trunk returning the five block outputs (post-ReLU); max-pool only before the last block."""

    def __init__(self, config: LatentLPIPSConfig):
        super().__init__()
        chans = (config.in_channels, *config.widths)
        self.blocks = nn.ModuleList(_block(chans[i], chans[i + 1], n, config.batch_norm)
                                    for i, n in enumerate(VGG16_CONVS_PER_BLOCK))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, block in enumerate(self.blocks):
            if i == POOLED_BLOCK:
                x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            taps.append(x)
        return taps


def _unit_normalise(features: torch.Tensor) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LatentLPIPS(nn.Module):
    """d(x, y) per sample, shape (B,), for latents in the UNet's (scaled) latent space."""

    def __init__(self, config: LatentLPIPSConfig = LatentLPIPSConfig()):
        super().__init__()
        self.config = config
        self.trunk = LatentVGG(config)
        self.heads = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in config.widths)
        for head in self.heads:             # start as the unweighted LPIPS (mean over channels)
            nn.init.constant_(head.weight, 1.0 / head.in_channels)

    def layer_distances(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, taps): each tap's spatially averaged, head-weighted squared feature difference."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"latent LPIPS expects two (B, {self.config.in_channels}, H, W) tensors of one shape, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        feats = self.trunk(torch.cat([x, y]))
        out = []
        for head, f in zip(self.heads, feats):
            fx, fy = _unit_normalise(f).chunk(2)
            out.append(head((fx - fy) ** 2).mean(dim=(2, 3)).squeeze(1))
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.layer_distances(x, y).sum(dim=1)

    @torch.no_grad()
    def clamp_heads_(self) -> None:
        """Project the heads back onto w >= 0 (LPIPS's constraint) after an optimizer step."""
        for head in self.heads:
            head.weight.clamp_(min=0)


def save_latent_lpips(model: LatentLPIPS, path: str | Path) -> Path:
    """Weights as safetensors with the architecture in the metadata, so a file is self-describing."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "tlcm-latent-lpips", "config": json.dumps(asdict(model.config))})
    return path


def load_latent_lpips(path: str | Path, device: torch.device | str = "cpu") -> LatentLPIPS:
    """A frozen, eval-mode model from a local file written by :func:`save_latent_lpips` (never downloads)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"latent LPIPS weights not found: {path} (train them with `python -m tlcm_train.lpips "
                                "train ...`; nothing is downloaded)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "tlcm-latent-lpips" or "config" not in meta:
        raise ValueError(f"{path}: not a latent LPIPS file (missing 'tlcm-latent-lpips' metadata)")
    try:
        raw = json.loads(meta["config"])
        config = LatentLPIPSConfig(int(raw["in_channels"]), tuple(int(w) for w in raw["widths"]), bool(raw["batch_norm"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable latent LPIPS architecture metadata ({err!r})") from err
    model = LatentLPIPS(config)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit their stated architecture: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    if any(bool((h.weight < 0).any()) for h in model.heads):
        raise ValueError(f"{path}: negative LPIPS head weights (the distance would not be a distance)")
    return model.requires_grad_(False).eval().to(device)
