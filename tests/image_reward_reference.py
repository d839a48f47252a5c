"""The ImageReward package itself, as the reference for the built-in IR scorer: image-reward 1.5 with the
transformers, tokenizers, huggingface-hub and timm releases of its time and the torchvision that pairs with
the installed torch, installed with ``pip --target`` into the git-ignored ``.cache/`` and run in a
subprocess with that folder first on its path.

The subprocess builds the package's own ``ImageReward`` model (its BLIP image tower, "med" BERT, MLP head,
preprocessing, tokenizer call and standardisation) at test size: BLIP's ViT-B/16 instead of ViT-L/16 (the
same blocks at 768 wide and 12 deep; ViT-L would take 1.2 GB per copy) and a 2-layer text encoder from a
small med config, with a local word-piece vocabulary where BLIP would download bert-base-uncased's. It
draws random weights away from the identity (LayerNorm scales and shifts too), saves them as safetensors
and prints the package's ``score(prompt, image)`` of each pair. Two things are replaced, neither on the
scoring path: fairscale (imported for activation checkpointing, which scoring never turns on) and the
package's ``__init__`` files, which import its CLIP and training code.
"""
from __future__ import annotations

import json
from pathlib import Path

from pip_target import installed, run_reference, torchvision_requirement

IMAGE_REWARD_REQUIREMENTS = ["image-reward==1.5", "transformers==4.30.2", "tokenizers==0.13.3",
                             "huggingface-hub==0.16.4", "timm==0.6.13", torchvision_requirement()]

VOCABULARY = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(
    "a an the red blue green yellow cat dog car house on of at in dawn light ##house cliff photo ##s ##ing "
    "small big old , . !").split()]

_SCRIPT = r"""
import json, sys, types, importlib.util
from pathlib import Path
import torch
from PIL import Image
from safetensors.torch import save_file

checkpointing = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
def checkpoint_wrapper(module):
    raise RuntimeError("activation checkpointing is a training option")
checkpointing.checkpoint_wrapper = checkpoint_wrapper
for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint"):
    sys.modules[name] = types.ModuleType(name)
sys.modules[checkpointing.__name__] = checkpointing
root = Path(importlib.util.find_spec("ImageReward").submodule_search_locations[0])
for name, folder in (("ImageReward", root), ("ImageReward.models", root / "models")):
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package

import transformers
import ImageReward.ImageReward as image_reward
import ImageReward.models.BLIP.blip as blip
from ImageReward.models.BLIP.blip_pretrain import BLIP_Pretrain

weights_out, tokenizer_dir, med_config, seed = sys.argv[1:5]
pairs = json.loads(sys.argv[5])

class LocalTokenizer(transformers.BertTokenizer):
    @classmethod
    def from_pretrained(cls, name, *args, **kwargs):
        return transformers.BertTokenizer.from_pretrained(tokenizer_dir)

blip.BertTokenizer = LocalTokenizer
image_reward.BLIP_Pretrain = lambda **kwargs: BLIP_Pretrain(**{**kwargs, "vit": "base"})
torch.manual_seed(int(seed))
model = image_reward.ImageReward(med_config=med_config, device="cpu").eval()
with torch.no_grad():
    for name, tensor in model.named_parameters():
        if name.endswith("cls_token") or name.endswith("pos_embed") or "embeddings" in name:
            tensor.copy_(torch.randn_like(tensor) * 0.5)
        elif tensor.ndim == 1 and ("norm" in name.lower()) and name.endswith("weight"):
            tensor.copy_(1 + 0.3 * torch.randn_like(tensor))
        elif tensor.ndim == 1:
            tensor.copy_(0.2 * torch.randn_like(tensor))
        else:
            tensor.copy_(torch.randn_like(tensor) / tensor[0].numel() ** 0.5)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights_out)
print(json.dumps([model.score(prompt, Image.open(path)) for prompt, path in pairs]))
"""


def write_tokenizer(folder: Path) -> Path:
    """A bert-base-uncased-style tokenizer folder with a small vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def write_med_config(path: Path, text_layers: int = 2) -> Path:
    """BLIP's med config at test size: BERT-base's width (the head reads 768) over ``text_layers`` layers."""
    path.write_text(json.dumps({
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 512,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 12,
        "num_hidden_layers": text_layers, "pad_token_id": 0, "type_vocab_size": 2,
        "vocab_size": len(VOCABULARY) + 2, "encoder_width": 768, "add_cross_attention": True}))
    return path


def reference_scores(folder: Path, pairs: list[tuple[str, Path]], seed: int) -> tuple[Path, Path, list[float]]:
    """The package's scores of (prompt, image) pairs on random weights: (weights file, tokenizer folder, scores)."""
    package = installed("image-reward-reference", IMAGE_REWARD_REQUIREMENTS, "ImageReward")
    tokenizer = write_tokenizer(folder / "tokenizer")
    weights = folder / "image_reward.safetensors"
    out = run_reference(package, _SCRIPT, [str(weights), str(tokenizer), str(write_med_config(folder / "med.json")),
                                           str(seed), json.dumps([[p, str(i)] for p, i in pairs])], "ImageReward")
    return weights, tokenizer, json.loads(out.strip().splitlines()[-1])
