"""Checks run *inside* a host venv (``python tests/host_venv_checks.py CHECK ARGS...``), printing JSON.

Only what the host ships is importable there (A1111 1.10.1: torch 2.1.2, transformers 4.30.2, accelerate
0.21.0, no diffusers, no peft), so these exercise the extension's real code paths under the host's pins.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HOST_FORBIDDEN = ("diffusers", "peft", "accelerate")


def forbidden_modules() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in HOST_FORBIDDEN})


def convert_lora(lora_dir: str) -> dict:
    """The WebUI's "Convert LoRA files" path on every unconverted PEFT file under ``lora_dir``."""
    from webui_tlcm import lora_folder
    reports = [lora_folder.convert(item) for item in lora_folder.scan(lora_dir) if not item.is_converted]
    return {"reports": reports, "forbidden": forbidden_modules()}


class TinyLDM:
    """A seeded ε-prediction model with SDXL's noise schedule, shaped like an ldm ``LatentDiffusion``."""

    def __init__(self, seed: int) -> None:
        import torch
        from reference_tlcm import SDXL_ALPHAS_CUMPROD
        self.alphas_cumprod = SDXL_ALPHAS_CUMPROD.float()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))

    def apply_model(self, z, t, cond):
        import torch
        with torch.no_grad():
            scale = (1 + t.float() / 1000).view(-1, 1, 1, 1)
            return torch.tanh(self.conv(z)) * scale + 0.1 * cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def sampler_parity() -> dict:
    """The core's k-diffusion sampler through k-diffusion's CompVisDenoiser vs the reference loop."""
    import torch
    from reference_tlcm import README_TABLE, reference_loop, seeded_normal
    from webui_stub.kdiffusion_pypi import load_k_diffusion

    from tlcm.sampling import sample_tlcm
    from tlcm.schedules import tlcm_sigmas
    k_diffusion = load_k_diffusion()
    model, seed, shape = TinyLDM(seed=3), 11, (2, 4, 8, 8)
    cond = torch.randn((2, 5, 16), generator=torch.Generator().manual_seed(5))
    denoiser = k_diffusion.external.CompVisDenoiser(model)
    eps_fn = lambda z, t: model.apply_model(z, torch.full((shape[0],), t), cond)  # noqa: E731
    errors = {}
    for steps in (1, 2, 4, 8):
        sigmas = tlcm_sigmas(steps)
        draw = seeded_normal(seed, shape)
        x = draw() * (1 + sigmas[0] ** 2).sqrt()
        out = sample_tlcm(denoiser, x, sigmas, extra_args={"cond": cond}, disable=True,
                          noise_sampler=lambda sigma, sigma_next: draw())
        again = seeded_normal(seed, shape)
        expected = reference_loop(eps_fn, again(), README_TABLE[steps], eta=1.0, noise=again)
        errors[steps] = float(((out - expected).norm() / expected.norm()).item())
    return {"relative_errors": errors, "torch": torch.__version__, "forbidden": forbidden_modules()}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    check, *args = sys.argv[1:]
    print(json.dumps({"convert_lora": convert_lora, "sampler_parity": sampler_parity}[check](*args)))
