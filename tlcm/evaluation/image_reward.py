"""IR: ImageReward v1.0, the paper's human-preference reward for an image given its prompt.

ImageReward is BLIP with a regression head. A ViT-L/16 encodes the 224² image (timm-style pre-norm blocks:
fused qkv, erf GELU, LayerNorm eps 1e-6, a final norm); a 12-layer BERT in BLIP's "med" form reads the
prompt (bert-base-uncased word pieces, padded or cut to 35 tokens; word + position embeddings, no token
types), each layer post-norm self-attention, then cross-attention from the text to every image token, then
the feed-forward (LayerNorm eps 1e-12); the [CLS] output goes through five affine layers
768 → 1024 → 128 → 64 → 16 → 1 (dropout between them, the identity at inference), and the reward is
(output − 0.16717) / 1.03334, the release's standardisation.

The network is written out here over the released state dict, so scoring needs none of the ImageReward
package's own dependencies (it pins transformers, timm and fairscale releases no host of ours runs). The
weights are ``ImageReward.pt`` (THUDM/ImageReward), a pickled dict of tensors read with torch's restricted
unpickler (no code runs), or a safetensors copy; the tokenizer is a local bert-base-uncased folder. Head
counts follow from the widths (64 per head: ViT-L 16, BERT 12); image and patch sizes from the weights.
Images are preprocessed as the package does: shortest side to 224 (PIL bicubic, the long side truncated as
torchvision's ``Resize`` computes it), centre crop, OpenAI CLIP's mean and std.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..file_readers import read_state_dict
from .clip_score import OPENAI_MEAN, OPENAI_STD, clip_pixels

REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072
PROMPT_TOKENS = 35
HEAD_WIDTH = 64
VIT, TEXT, HEAD = "blip.visual_encoder.", "blip.text_encoder.", "mlp.layers."
HEAD_LAYERS = (0, 2, 4, 6, 7)          # the Linear layers of the released nn.Sequential
REWARD_HINT = ("ImageReward.pt of ImageReward v1.0 (huggingface.co/THUDM/ImageReward, file ImageReward.pt), "
               "or a .safetensors copy of it")
TOKENIZER_HINT = ("the bert-base-uncased tokenizer as a local folder (huggingface.co/google-bert/bert-base-uncased: "
                  "vocab.txt, tokenizer_config.json)")


def load_reward_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The scoring part of the state dict (image tower, text encoder, head) as float32; the BLIP parts the
    reward never runs are dropped, and a file without the scoring part is refused naming what is missing.
    A pickle is mapped, not read, so the check before sampling costs no second read of the file."""
    state = read_state_dict(path, mmap=True)
    needed = [f"{VIT}cls_token", f"{VIT}pos_embed", f"{VIT}patch_embed.proj.weight", f"{VIT}norm.weight",
              f"{TEXT}embeddings.word_embeddings.weight", f"{TEXT}encoder.layer.0.crossattention.self.key.weight",
              *(f"{HEAD}{i}.weight" for i in HEAD_LAYERS)]
    missing = [key for key in needed if key not in state]
    if missing:
        raise ValueError(f"{path} is not an ImageReward state dict (missing {missing[:3]}); expected {REWARD_HINT}")
    return {key: value.float() for key, value in state.items()
            if key.startswith((VIT, TEXT, HEAD)) and not key.endswith("position_ids")}


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


def _linear(x: torch.Tensor, state: dict, name: str) -> torch.Tensor:
    return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


def _norm(x: torch.Tensor, state: dict, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention with 64-wide heads; ``keep`` (batch, keys) marks the keys that may be attended."""
    batch, width = q.shape[0], q.shape[-1]
    heads = lambda t: t.view(batch, t.shape[1], width // HEAD_WIDTH, HEAD_WIDTH).transpose(1, 2)  # noqa: E731
    mask = None if keep is None else keep[:, None, None, :]
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, q.shape[1], width)


@dataclass
class ImageRewardScorer:
    state: dict[str, torch.Tensor]
    tokenizer: object
    device: torch.device
    variant: dict

    @classmethod
    def from_paths(cls, weights: str | Path, tokenizer: str | Path, *,
                   device: str | torch.device = "cpu") -> "ImageRewardScorer":
        state = {key: value.to(device) for key, value in load_reward_weights(weights).items()}
        variant = {"weights": Path(weights).name, "tokenizer": Path(tokenizer).name,
                   "preprocessing": f"shortest side to {cls.image_size_of(state)} (PIL bicubic, torchvision's size "
                                    "rule), centre crop, OpenAI CLIP mean/std",
                   "text": f"bert-base-uncased word pieces, padded or cut to {PROMPT_TOKENS} tokens",
                   "score": f"(head([CLS]) - {REWARD_MEAN:.5f}) / {REWARD_STD:.5f} per image, mean over images"}
        return cls(state, load_reward_tokenizer(tokenizer), torch.device(device), variant)

    @staticmethod
    def image_size_of(state: dict[str, torch.Tensor]) -> int:
        patch = state[f"{VIT}patch_embed.proj.weight"].shape[-1]
        return math.isqrt(state[f"{VIT}pos_embed"].shape[1] - 1) * patch

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The ViT's normalised tokens ([CLS] first) of (batch, 3, size, size) normalised pixels."""
        s = self.state
        proj = s[f"{VIT}patch_embed.proj.weight"]
        x = F.conv2d(pixels, proj, s[f"{VIT}patch_embed.proj.bias"], stride=proj.shape[-1]).flatten(2).transpose(1, 2)
        x = torch.cat([s[f"{VIT}cls_token"].expand(len(x), -1, -1), x], dim=1) + s[f"{VIT}pos_embed"]
        for i in range(_count(s, f"{VIT}blocks.")):
            block = f"{VIT}blocks.{i}."
            q, k, v = _linear(_norm(x, s, block + "norm1", 1e-6), s, block + "attn.qkv").chunk(3, dim=-1)
            x = x + _linear(_attention(q, k, v), s, block + "attn.proj")
            hidden = F.gelu(_linear(_norm(x, s, block + "norm2", 1e-6), s, block + "mlp.fc1"))
            x = x + _linear(hidden, s, block + "mlp.fc2")
        return _norm(x, s, f"{VIT}norm", 1e-6)

    def _bert_attention(self, x: torch.Tensor, context: torch.Tensor, name: str, keep: torch.Tensor | None):
        s = self.state
        q, k, v = (_linear(source, s, f"{name}self.{part}")
                   for source, part in ((x, "query"), (context, "key"), (context, "value")))
        return _norm(_linear(_attention(q, k, v, keep), s, f"{name}output.dense") + x, s, f"{name}output.LayerNorm",
                     1e-12)

    def text_cls(self, ids: torch.Tensor, attention: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """The [CLS] output of the text encoder reading ``ids`` while attending to ``image_tokens``."""
        s = self.state
        positions = s[f"{TEXT}embeddings.position_embeddings.weight"][: ids.shape[1]]
        x = _norm(s[f"{TEXT}embeddings.word_embeddings.weight"][ids] + positions, s, f"{TEXT}embeddings.LayerNorm",
                  1e-12)
        keep = attention.bool()
        for i in range(_count(s, f"{TEXT}encoder.layer.")):
            layer = f"{TEXT}encoder.layer.{i}."
            x = self._bert_attention(x, x, layer + "attention.", keep)
            x = self._bert_attention(x, image_tokens, layer + "crossattention.", None)
            hidden = F.gelu(_linear(x, s, layer + "intermediate.dense"))
            x = _norm(_linear(hidden, s, layer + "output.dense") + x, s, layer + "output.LayerNorm", 1e-12)
        return x[:, 0]

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int = 16) -> list[float]:
        """The reward of each (image, prompt) pair."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        size = self.image_size_of(self.state)
        out = []
        for start in range(0, len(images), batch_size):
            pixels = clip_pixels(images[start:start + batch_size], size, OPENAI_MEAN, OPENAI_STD).to(self.device)
            tokens = self.tokenizer(list(prompts[start:start + batch_size]), padding="max_length", truncation=True,
                                    max_length=PROMPT_TOKENS, return_tensors="pt")
            x = self.text_cls(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device),
                              self.image_tokens(pixels))
            for i in HEAD_LAYERS:
                x = _linear(x, self.state, f"{HEAD}{i}")
            out += ((x[:, 0] - REWARD_MEAN) / REWARD_STD).tolist()
        return out


def load_reward_tokenizer(folder: str | Path):
    """bert-base-uncased's tokenizer from ``folder`` with the two tokens BLIP adds ([DEC], [ENC]), so a prompt
    is split exactly as the release splits it."""
    from transformers import BertTokenizer
    folder = Path(folder)
    if not (folder / "vocab.txt").is_file():
        raise FileNotFoundError(f"ImageReward tokenizer not found: {folder / 'vocab.txt'} is missing; pass "
                                f"{TOKENIZER_HINT}")
    tokenizer = BertTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer
