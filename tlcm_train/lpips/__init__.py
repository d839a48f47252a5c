"""Latent LPIPS for TLCM: model, BAPPS reader, synthetic 2AFC sets, trainer (``python -m tlcm_train.lpips``)."""
from .model import LatentLPIPS, LatentLPIPSConfig, load_latent_lpips, save_latent_lpips
from .twoafc import TwoAFCLatents

__all__ = ["LatentLPIPS", "LatentLPIPSConfig", "TwoAFCLatents", "load_latent_lpips", "save_latent_lpips"]
