"""Test harness: a fresh stand-in WebUI per test, the tiny SDXL UNet behind an LDM-like model, helpers."""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

from reference_tlcm import SDXL_ALPHAS_CUMPROD
from tlcm.testing.tiny import CROSS_ATTENTION_DIM, TEXT_WIDTH_2

from .kdiffusion_pypi import load_k_diffusion

STUB_DIR = Path(__file__).resolve().parent
REPO = STUB_DIR.parents[1]
SHIM = REPO / "scripts" / "tlcm_webui.py"
_OWNED = ("modules", "gradio", "webui_tlcm.script", "k_diffusion", "networks")


def purge() -> None:
    """Forget every stand-in module (and the script module that imported them)."""
    for name in list(sys.modules):
        if any(name == root or name.startswith(root + ".") for root in _OWNED):
            del sys.modules[name]


def start_webui(monkeypatch) -> SimpleNamespace:
    """A freshly imported stand-in ``modules`` package (state as right after WebUI start, before extensions)."""
    purge()
    monkeypatch.syspath_prepend(str(STUB_DIR))
    load_k_diffusion()
    import modules.api.api as api
    from modules import infotext_utils, paths, processing, scripts, sd_samplers, sd_schedulers, shared
    return SimpleNamespace(api=api, infotext_utils=infotext_utils, paths=paths, processing=processing,
                           scripts=scripts, sd_samplers=sd_samplers, sd_schedulers=sd_schedulers, shared=shared)


class FakeSDXL:
    """What ``CompVisDenoiser`` wraps: ``alphas_cumprod`` and ``apply_model(x, t, cond)`` -> ε.

    ε comes from the tiny SDXL UNet, or (``unet=None``, for step-arithmetic tests) from a cheap smooth
    function of x, t and the conditioning.
    """

    is_sdxl = True

    def __init__(self, unet: torch.nn.Module | None) -> None:
        self.unet = unet
        self.alphas_cumprod = SDXL_ALPHAS_CUMPROD.float()   # float32, as the WebUI's model holds it
        self.timesteps: list[list[float]] = []

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        self.timesteps.append(t.tolist())
        return self.eps(x, t, cond)

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        if self.unet is None:
            shift = cond["vector"][:, :4, None, None]
            return torch.tanh(x + shift) * (0.5 + t.view(-1, 1, 1, 1) / 2000)
        return self.unet(x, t, encoder_hidden_states=cond["crossattn"],
                         added_cond_kwargs={"text_embeds": cond["vector"], "time_ids": cond["time_ids"]}).sample


class FakeForgeFlux:
    """Forge's FLUX model as its sampler sees it (Forge dfdcbab6): ``forge_objects.unet.model.predictor`` is
    its flow predictor ``PredictionFlux``: ``prediction_type == "const"``, the resolution shift ``mu``, a σ
    table of FLUX's shift of t = 1/10000 … 1, x̂0 = x − σ·v and start σ·ξ + (1 − σ)·latent.
    ``apply_model(x, σ, cond)`` is a cheap smooth velocity; the σ of every call is kept."""

    is_sdxl = False

    def __init__(self, mu: float = 1.15) -> None:
        import math
        t = torch.arange(1, 10001, dtype=torch.float32) / 10000
        predictor = SimpleNamespace(
            prediction_type="const", mu=mu, sigmas=math.exp(mu) / (math.exp(mu) + (1 / t - 1)),
            calculate_denoised=lambda sigma, out, x: x - out * sigma.view(-1, 1, 1, 1),
            noise_scaling=lambda sigma, noise, latent, max_denoise=False: sigma * noise + (1.0 - sigma) * latent)
        self.forge_objects = SimpleNamespace(unet=SimpleNamespace(model=SimpleNamespace(predictor=predictor)))
        self.sigmas_seen: list[list[float]] = []

    def apply_model(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        self.sigmas_seen.append(sigma.tolist())
        return self.velocity(x, sigma, cond)

    @staticmethod
    def velocity(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        return torch.tanh(x + cond["vector"][:, :4, None, None]) * (0.5 + sigma.view(-1, 1, 1, 1) / 2)


def conditioning(batch: int, seed: int) -> dict:
    """One prompt's SDXL-shaped conditioning for the tiny UNet (77 tokens, pooled embedding, six size ids),
    repeated for each image of the batch."""
    g = torch.Generator().manual_seed(seed)
    one = {"crossattn": torch.randn(1, 77, CROSS_ATTENTION_DIM, generator=g),
           "vector": torch.randn(1, TEXT_WIDTH_2, generator=g),
           "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    return {k: v.repeat(batch, *([1] * (v.ndim - 1))) for k, v in one.items()}


def load_extension(webui: SimpleNamespace) -> list[type]:
    """Load the extension's script file as the WebUI does (again on "Reload UI")."""
    return webui.scripts.load_scripts([SHIM])


def fake_networks(*loaded: tuple[str, int]) -> ModuleType:
    """The built-in Lora extension's ``networks`` module after activation: (name, matched module count)."""
    module = ModuleType("networks")
    module.loaded_networks = [SimpleNamespace(name=name, modules={f"m{i}": None for i in range(n)})
                              for name, n in loaded]
    return module
