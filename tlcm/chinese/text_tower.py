"""The Chinese CLIP text tower PEA-Diffusion conditions on, loaded from a local transformers folder.

PEA-Diffusion's SDXL adapter reads the token states of Chinese-CLIP ViT-H/14's text tower
(RoBERTa-wwm-ext-large-chinese, width 1024): upstream loads ``clip_cn_vit-h-14.pt`` with ``cn_clip`` and feeds
the BERT output sequence (before the [CLS] projection) to the adapter (OPPO-Mente-Lab/PEA-Diffusion
``train_sdxl_zh.py``, ``tests/test_sdxl_zh.py``). The same weights ship as a transformers folder in HF
``OFA-Sys/chinese-clip-vit-huge-patch14`` (``config.json``, ``pytorch_model.bin``, ``vocab.txt``), whose
``ChineseCLIPModel.text_model`` is that BERT; ``last_hidden_state`` equals cn_clip's ``bert(...)[0]``.

Trap: ``ChineseCLIPTextModel.from_pretrained`` on that full-model folder only warns and leaves every weight random
(keys are prefixed ``text_model.``), so we build the text tower ourselves and load its weights strictly.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import one_line
from ..file_readers import check_values, read_json, read_state_dict

TEXT_MODEL_DOWNLOAD_HINT = (
    "Download the transformers folder of OFA-Sys/chinese-clip-vit-huge-patch14 from Hugging Face "
    "(config.json, pytorch_model.bin, vocab.txt)")
_PREFIXES = {"chinese_clip": "text_model.", "chinese_clip_text_model": ""}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _weight_file(folder: Path) -> Path:
    """The folder's weight file, after checking that everything the loader reads is there."""
    missing = [n for n in ("config.json", "vocab.txt") if not (folder / n).is_file()]
    weights = [folder / n for n in _WEIGHT_FILES if (folder / n).is_file()]
    if not weights:
        missing.append(" or ".join(_WEIGHT_FILES))
    if missing:
        raise FileNotFoundError(
            f"Chinese CLIP text model folder {folder} lacks {', '.join(missing)}. {TEXT_MODEL_DOWNLOAD_HINT}.")
    return weights[0]


def _model_type(folder: Path) -> str:
    config = read_json(folder / "config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in _PREFIXES:
        raise ValueError(f"{folder}/config.json has model_type {model_type!r}; expected one of "
                         f"{sorted(_PREFIXES)}. {TEXT_MODEL_DOWNLOAD_HINT}.")
    return model_type


def load_text_tower(folder: str | Path):
    """(BertTokenizer, ChineseCLIPTextModel without pooler) from a full Chinese-CLIP or text-only folder."""
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPTextConfig, ChineseCLIPTextModel
    folder = Path(folder)
    weight_file = _weight_file(folder)
    model_type = _model_type(folder)
    config = (ChineseCLIPConfig.from_pretrained(folder).text_config if model_type == "chinese_clip"
              else ChineseCLIPTextConfig.from_pretrained(folder))
    prefix = _PREFIXES[model_type]
    state = {k[len(prefix):]: v for k, v in read_state_dict(weight_file, mmap=True).items()   # HF ships a pickle
             if k.startswith(prefix) and ".pooler." not in f".{k}"}
    check_values(state, str(weight_file))
    model = ChineseCLIPTextModel(config, add_pooling_layer=False)
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as err:      # torch reports shape mismatches this way
        raise ValueError(f"{weight_file} does not fit {folder}/config.json ({one_line(err)})") from err
    if missing:
        raise ValueError(f"{folder} holds no weights for {len(missing)} text-tower tensors (e.g. {missing[0]}); "
                         f"is it a Chinese-CLIP checkpoint? {TEXT_MODEL_DOWNLOAD_HINT}.")
    # BertTokenizer(vocab_file=...) yields an empty vocabulary on transformers 5.x; from_pretrained(dir) works.
    return BertTokenizer.from_pretrained(str(folder)), model.eval()
