"""Load local SDXL models (diffusers folders or single-file checkpoints) without touching the network."""
from .device import auto_device_dtype
from .loader import PIPELINE_KINDS, load_sdxl_pipeline

__all__ = ["PIPELINE_KINDS", "auto_device_dtype", "load_sdxl_pipeline"]
