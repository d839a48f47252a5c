"""The MSCOCO-2017 5K prompts: one caption per val2017 image, by a fixed rule, checked by hash.

Papers that report "COCO-2017 5K" numbers do not say which of an image's five captions they use, so a
number is only comparable with the rule and the list's hash beside it (docs/eval.md §2). The list ships
with the package (``coco2017_val_5k.txt``, attribution in ``coco2017_val_5k.NOTICE.md``); reading it
checks the hash, so an edited or truncated file can never be scored as the benchmark.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

PROMPT_FILE = Path(__file__).with_name("coco2017_val_5k.txt")
PROMPT_COUNT = 5000
PROMPTS_SHA256 = "2209843982e718a837749ed72cecfaee94e728bc5d057230f483a1063cd31fb9"
PROMPT_RULE = ("MSCOCO-2017 val 5K: for each val2017 image_id in ascending order, the caption with the smallest "
               "annotation id, stripped of leading and trailing white space (captions_val2017.json)")
PROMPT_SET = "coco2017-val-5k"


def prompts_sha256(prompts: list[str]) -> str:
    """sha256 of the newline-joined list: the identity a result file records."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def derive_coco_prompts(captions_json: str | Path) -> list[str]:
    """Apply the rule to the official ``captions_val2017.json`` (how the shipped list was made)."""
    data = json.loads(Path(captions_json).read_text(encoding="utf-8"))
    first: dict[int, tuple[int, str]] = {}
    for ann in data["annotations"]:
        image_id, ann_id = int(ann["image_id"]), int(ann["id"])
        if image_id not in first or ann_id < first[image_id][0]:
            first[image_id] = (ann_id, ann["caption"])
    image_ids = sorted(int(image["id"]) for image in data["images"])
    missing = [i for i in image_ids if i not in first]
    if missing:
        raise ValueError(f"{captions_json}: images without a caption: {missing[:5]}")
    return [first[i][1].strip() for i in image_ids]


def write_prompt_file(prompts: list[str], path: str | Path = PROMPT_FILE) -> Path:
    """One prompt a line, a final newline; the hash is over the lines joined without it."""
    from ..files import atomic_write_text
    if any("\n" in p or "\r" in p for p in prompts):
        raise ValueError("a prompt holds a line break; it cannot be stored one a line")
    return atomic_write_text(path, "\n".join(prompts) + "\n")


def load_coco_prompts(path: str | Path = PROMPT_FILE) -> list[str]:
    """The 5,000 prompts in benchmark order; ``ValueError`` when the file is not exactly the benchmark list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt list not found: {path} (it ships with the tlcm package; reinstall it)")
    text = path.read_text(encoding="utf-8")
    prompts = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    digest = prompts_sha256(prompts)
    if len(prompts) != PROMPT_COUNT or digest != PROMPTS_SHA256:
        raise ValueError(f"{path} is not the MSCOCO-2017 5K list: {len(prompts)} prompts, sha256 {digest} "
                         f"(expected {PROMPT_COUNT}, {PROMPTS_SHA256})")
    return prompts
