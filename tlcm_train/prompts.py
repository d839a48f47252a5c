"""Prompts are the only training data (data-free distillation): read them, shuffle them, resume mid-epoch.

Formats: ``.txt`` (one prompt per line), ``.jsonl`` (one object per line with a ``prompt``, ``text`` or
``caption`` field, or a bare JSON string), ``.csv`` (a header row with one of those columns). Blank
prompts are dropped; a file that yields none is an error, not a silent skip.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Sequence

PROMPT_FIELDS = ("prompt", "text", "caption")
PROMPT_SUFFIXES = (".txt", ".jsonl", ".csv")


class PromptFileError(ValueError):
    """A prompts file is missing, unreadable, of an unknown kind, or holds no prompts."""


def _from_txt(text: str, path: Path) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def _from_jsonl(text: str, path: Path) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        except RecursionError as err:
            raise PromptFileError(f"{path}:{number}: JSON nested too deeply to be a prompt") from err
        if isinstance(item, dict):
            key = next((k for k in PROMPT_FIELDS if k in item), None)
            if key is None:
                raise PromptFileError(f"{path}:{number}: no {'/'.join(PROMPT_FIELDS)} field in {sorted(item)}")
            item = item[key]
        if not isinstance(item, str):
            raise PromptFileError(f"{path}:{number}: the prompt must be a string, got {type(item).__name__}")
        prompts.append(item.strip())
    return prompts


def _from_csv(text: str, path: Path) -> list[str]:
    reader = csv.DictReader(text.splitlines())
    try:
        columns = reader.fieldnames or []
        key = next((k for k in PROMPT_FIELDS if k in columns), None)
        if key is None:
            raise PromptFileError(f"{path}: needs a header with a {'/'.join(PROMPT_FIELDS)} column, got {columns}")
        return [(row.get(key) or "").strip() for row in reader]
    except csv.Error as err:       # e.g. a field over csv.field_size_limit()
        raise PromptFileError(f"{path}:{reader.line_num}: not valid CSV ({err})") from err


_READERS = {".txt": _from_txt, ".jsonl": _from_jsonl, ".csv": _from_csv}


def read_prompts(paths: Sequence[str | Path]) -> list[str]:
    """All non-blank prompts of ``paths``, in file order."""
    if not paths:
        raise PromptFileError("no prompt files given (data.prompts)")
    prompts: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise PromptFileError(f"{path}: unknown prompts file type; use {', '.join(PROMPT_SUFFIXES)}")
        if path.is_dir():
            raise PromptFileError(f"{path} is a folder; expected a prompts file")
        if not path.is_file():
            raise PromptFileError(f"prompts file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise PromptFileError(f"cannot read prompts file {path}: {err}") from err
        found = [p for p in reader(text, path) if p]
        if not found:
            raise PromptFileError(f"prompts file {path} holds no prompts")
        prompts.extend(found)
    return prompts


class PromptStream:
    """Endless shuffled batches of prompt indices for one rank, resumable from ``position``.

    A permutation drawn from ``seed`` fixes each rank's disjoint shard (every ``world``-th prompt), so a
    rank only ever encodes its own prompts; every epoch then reshuffles the shard with ``seed + epoch``.
    Nothing but ``position`` (samples already taken) needs saving to resume exactly.
    """

    def __init__(self, num_prompts: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if num_prompts < 1:
            raise PromptFileError("no prompts to train on")
        order = list(range(num_prompts))
        random.Random(seed).shuffle(order)
        # fewer prompts than ranks: a rank without a share reuses one prompt
        self.shard = order[rank::world] or [order[rank % num_prompts]]
        self.batch_size, self.seed = batch_size, seed
        self.position = 0
        self._epoch, self._order = -1, self.shard

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._order = list(self.shard)
            random.Random(self.seed + 1 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self._order

    def next_batch(self) -> list[int]:
        """The next ``batch_size`` prompt indices (into the full prompt list)."""
        batch: list[int] = []
        while len(batch) < self.batch_size:
            epoch, offset = divmod(self.position, len(self.shard))
            batch.append(self._epoch_order(epoch)[offset])
            self.position += 1
        return batch
