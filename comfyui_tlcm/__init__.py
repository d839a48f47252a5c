"""TLCM nodes for ComfyUI (V3 schema) over the shared ``tlcm`` core; loaded through the repo-root entry."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .chinese_nodes import NODES as CHINESE_NODES
from .lora_nodes import TLCMLoraLoader, TLCMLoraSave
from .registration import register_sampler_and_scheduler
from .sampler_nodes import TLCMSampler, TLCMScheduler


class TLCMExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_sampler_and_scheduler()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TLCMSampler, TLCMScheduler, TLCMLoraLoader, TLCMLoraSave, *CHINESE_NODES]


async def comfy_entrypoint() -> TLCMExtension:
    return TLCMExtension()
