"""The PEA adapter: an MLP from Chinese CLIP token states to SDXL's cross-attention tokens and pooled vector.

Re-implemented from the architecture read in OPPO-Mente-Lab/PEA-Diffusion (class ``MLP`` in
``tests/test_sdxl_zh.py`` and ``train_sdxl_zh.py``; paper "PEA-Diffusion", arXiv 2311.17086)::

    x      = projector(LayerNorm(h))        # Linear(bias=False) / GELU stack, h: (B, L, text width)
    pooled = mean over the L positions of x # (B, 1280) -> SDXL ``text_embeds``
    tokens = fc(GELU(x))                    # (B, L, 2048) -> UNet ``encoder_hidden_states``

Upstream builds the stack with different widths (hidden 1024 in training, 2048 in its test script) and depth
(the 31.5 MB ``pytorch_model_pg.bin`` on HF ``OPPOer/PEA-Diffusion`` holds one more hidden layer), so widths
and depth are read from the weights instead of being fixed here. Key names are upstream's state-dict names:
``layernorm.weight/bias``, ``projector.<2i>.weight`` (GELUs sit at the odd Sequential indices), ``fc.weight/bias``.
Upstream's optional residual is off for every released shape (text width != 1280), so it is not modelled.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import one_line
from ..file_readers import check_values, read_state_dict

ADAPTER_DOWNLOAD_HINT = (
    "Download the PEA-Diffusion adapter `pytorch_model.bin` from the Hugging Face repo OPPOer/PEA-Diffusion "
    "(a safetensors copy with the same keys also works)")

_PROJECTOR_KEY = re.compile(r"^projector\.(\d+)\.weight$")


class PEAAdapter(nn.Module):
    """LayerNorm -> bias-free Linear/GELU stack -> (cross-attention tokens, pooled vector)."""

    def __init__(self, widths: list[int], cross_attention_dim: int) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a PEA projector needs at least one Linear layer, got widths {widths}")
        self.layernorm = nn.LayerNorm(widths[0])
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(n_in, n_out, bias=False))
        self.projector = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1], cross_attention_dim)
        self.act = nn.GELU()

    @property
    def text_width(self) -> int:
        return self.layernorm.normalized_shape[0]

    @property
    def pooled_dim(self) -> int:
        return self.fc.in_features

    @property
    def cross_attention_dim(self) -> int:
        return self.fc.out_features

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, text width) -> tokens (B, L, cross_attention_dim), pooled (B, pooled_dim)."""
        x = self.projector(self.layernorm(states))
        return self.fc(self.act(x)), x.mean(dim=1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: str = "<state dict>") -> "PEAAdapter":
        """Build the adapter whose shapes the weights describe and load them strictly."""
        indices = sorted(int(m.group(1)) for k in state if (m := _PROJECTOR_KEY.match(k)))
        required = {"layernorm.weight", "layernorm.bias", "fc.weight", "fc.bias"}
        if not indices or not required <= state.keys() or indices != list(range(0, 2 * len(indices), 2)):
            raise ValueError(
                f"{source} is not a PEA-Diffusion adapter: expected keys layernorm.weight/bias, projector.0.weight, "
                f"projector.2.weight, ..., fc.weight/bias; found {sorted(state)[:8]}...")
        check_values(state, source)
        weights = [state[f"projector.{i}.weight"] for i in indices]
        if any(w.ndim != 2 for w in [*weights, state["fc.weight"]]):
            raise ValueError(f"{source}: projector and fc weights must be 2-D matrices")
        widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]
        adapter = cls(widths, state["fc.weight"].shape[0])
        try:
            adapter.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as err:      # torch reports unexpected keys and shape mismatches this way
            raise ValueError(f"{source}: the weights do not form a PEA adapter ({one_line(err)})") from err
        return adapter.eval()


def read_adapter_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, or upstream's pickled ``pytorch_model.bin`` (tensors only, weights_only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"PEA adapter file not found: {path}. {ADAPTER_DOWNLOAD_HINT}.")
    return read_state_dict(path)


def load_adapter(path: str | Path) -> PEAAdapter:
    return PEAAdapter.from_state_dict(read_adapter_state(path), str(path))
