"""Chinese prompts for SDXL/TLCM through a PEA-Diffusion adapter (see ``encoder``, ``adapter``, ``text_tower``)."""
from .adapter import ADAPTER_DOWNLOAD_HINT, PEAAdapter, load_adapter
from .encoder import CN_CLIP_CONTEXT_LENGTH, ChineseTextEncoder
from .text_tower import TEXT_MODEL_DOWNLOAD_HINT, load_text_tower

__all__ = ["ADAPTER_DOWNLOAD_HINT", "CN_CLIP_CONTEXT_LENGTH", "ChineseTextEncoder", "PEAAdapter",
           "TEXT_MODEL_DOWNLOAD_HINT", "load_adapter", "load_text_tower"]
