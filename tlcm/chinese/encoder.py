"""Chinese prompts -> SDXL ``prompt_embeds`` / ``pooled_prompt_embeds`` (text tower + PEA adapter).

Tokenisation follows cn_clip's ``tokenize`` (OFA-Sys/Chinese-CLIP ``cn_clip/clip/utils.py``), which
PEA-Diffusion calls with its default length: [CLS] + WordPiece ids (CJK one per character) cut to 50 + [SEP],
zero-padded ([PAD] = 0) to 52; the attention mask is ``ids != [PAD]``. So SDXL receives 52 cross-attention
tokens instead of CLIP's 77 (the UNet attends over any length) and the pooled vector averages all 52 positions,
padding included, as upstream does.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .adapter import PEAAdapter, load_adapter
from .text_tower import load_text_tower

CN_CLIP_CONTEXT_LENGTH = 52


class ChineseTextEncoder:
    """A Chinese CLIP text tower plus a PEA adapter, producing SDXL conditioning tensors."""

    def __init__(self, tokenizer, text_model: torch.nn.Module, adapter: PEAAdapter,
                 max_length: int = CN_CLIP_CONTEXT_LENGTH) -> None:
        width = text_model.config.hidden_size
        if adapter.text_width != width:
            raise ValueError(f"the PEA adapter expects text states of width {adapter.text_width}, but the text "
                             f"model produces {width}: pair the adapter with the text model it was trained on "
                             "(OFA-Sys/chinese-clip-vit-huge-patch14 for the released SDXL adapter)")
        self.tokenizer, self.text_model, self.adapter, self.max_length = tokenizer, text_model, adapter, max_length

    @classmethod
    def from_pretrained(cls, text_model_dir: str | Path, adapter_path: str | Path,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        max_length: int = CN_CLIP_CONTEXT_LENGTH) -> "ChineseTextEncoder":
        tokenizer, text_model = load_text_tower(text_model_dir)
        adapter = load_adapter(adapter_path)
        encoder = cls(tokenizer, text_model, adapter, max_length)
        return encoder.to(device=device, dtype=dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ChineseTextEncoder":
        self.text_model.to(device=device, dtype=dtype)
        self.adapter.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """cn_clip layout: (B, max_length) ids, [CLS] ... [SEP] then [PAD] = 0."""
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt")["input_ids"]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt_embeds (B, max_length, adapter.cross_attention_dim), pooled_prompt_embeds (B, adapter.pooled_dim)."""
        device = next(self.text_model.parameters()).device
        ids = self.tokenize(prompts).to(device)
        states = self.text_model(input_ids=ids, attention_mask=ids.ne(self.tokenizer.pad_token_id)).last_hidden_state
        return self.adapter(states)
