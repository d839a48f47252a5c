"""TLCM nodes for ComfyUI (V3 schema) over the shared ``tlcm`` core; loaded through the repo-root entry."""
from __future__ import annotations

import importlib.util

from comfy_api.latest import ComfyExtension, io

from .lora_nodes import TLCMLoraLoader, TLCMLoraSave
from .registration import register_sampler_and_scheduler
from .sampler_nodes import TLCMSampler, TLCMScheduler


def _chinese_nodes() -> list[type[io.ComfyNode]]:
    """The Chinese text-encoder nodes, when that module is part of this checkout."""
    if importlib.util.find_spec(f"{__name__}.chinese_nodes") is None:
        return []
    from .chinese_nodes import NODES
    return list(NODES)


class TLCMExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_sampler_and_scheduler()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TLCMSampler, TLCMScheduler, TLCMLoraLoader, TLCMLoraSave, *_chinese_nodes()]


async def comfy_entrypoint() -> TLCMExtension:
    return TLCMExtension()
