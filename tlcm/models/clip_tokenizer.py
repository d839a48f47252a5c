"""SDXL's CLIP BPE tokenizers without any download: built from the vocabulary the open_clip wheel ships.

``open-clip-torch`` carries ``bpe_simple_vocab_16e6.txt.gz``, the same BPE as OpenAI CLIP; turned into
``vocab.json`` + ``merges.txt`` it gives a transformers ``CLIPTokenizer`` with the real 49,408 ids. We only
read the data file (``pip install --no-deps open-clip-torch``), never import open_clip (it would pull in
timm and torchvision).
"""
from __future__ import annotations

import gzip
import importlib.metadata
import json
from pathlib import Path

from ..files import atomic_write_text

BPE_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2


def bpe_vocab_path() -> Path:
    """Path of the BPE file inside the installed open-clip-torch distribution."""
    try:
        dist = importlib.metadata.distribution("open_clip_torch")
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            "Building SDXL's CLIP tokenizers offline (single-file checkpoints, the tiny kit) needs the BPE "
            "vocabulary shipped in the open-clip-torch wheel: run `pip install --no-deps open-clip-torch`.") from err
    path = Path(dist.locate_file(BPE_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch is installed but {path} is missing; reinstall it.")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_tokenizer(directory: str | Path, model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> Path:
    """Write vocab.json, merges.txt and tokenizer config for ``CLIPTokenizer.from_pretrained(directory)``.

    SDXL pads its first tokenizer with ``<|endoftext|>`` and its second with ``!``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    atomic_write_text(directory / "vocab.json", json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    atomic_write_text(directory / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {"model_max_length": model_max_length, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token,
              "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2))
    atomic_write_text(directory / "special_tokens_map.json", json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2))
    return directory
