"""Upper bounds on everything the app accepts, so no form value or API call can ask for unbounded work,
memory or disk: the app may be reachable by others (``--host``). The CLI has no such bounds; its user owns
the machine. A refusal names the field, the limit and the value given.
"""
from __future__ import annotations

import math
from typing import Any

from tlcm_train.config import STAGES

MAX_SEED = 2**32 - 1                 # numpy's generators take no more
MAX_TEXT = 4096                      # characters of a path or any other one-line value
MAX_PROMPT = 1000                    # characters of one prompt (CLIP reads 77 tokens of it)
MAX_LIST = 64                        # items of a list value (prompt files, sample prompts, ...)
MAX_COMMAND = 100_000                # characters of the edited command line
MAX_SIDE = 2048                      # pixels of an image side, trained or tried
MAX_LORA_STRENGTH = 2.0
MAX_TEACHER_STEPS = 100              # the teacher baseline's sampling steps
MAX_GUIDANCE = 30.0                  # the teacher baseline's CFG scale
MAX_MACHINES = 64
MAX_PROCESSES_PER_MACHINE = 16       # one per GPU
MAX_SAMPLE_GRIDS = 10_000            # sample grids of one run (they are kept, unlike checkpoints)
CONFIG_CAPS = {
    **{f"{stage}.steps": 1_000_000 for stage in STAGES},
    "train.warmup_steps": 1_000_000,
    "train.batch_size": 256,
    "train.resolution": MAX_SIDE,
    "lora.rank": 1024,
    "dm.fake_rank": 1024,
    "lcd.student_steps": 100,
    "lcd.teacher_steps": 100,
    "dm.fake_updates": 100,
    "dm.gan_teacher_steps": 100,
    "mps.decode_crop": MAX_SIDE // 8,            # the latent side of the largest image
    "output.keep_checkpoints": 100,
    "train.seed": MAX_SEED,
    "output.sample_seed": MAX_SEED,
}


class LimitError(ValueError):
    """A value is beyond what the app accepts; the message names the field and the limit."""


def check_at_most(what: str, value: float, limit: float) -> None:
    if value > limit:
        raise LimitError(f"{what}: at most {limit:,} in the app, got {value:,}")


def check_text(what: str, text: str, limit: int = MAX_TEXT) -> str:
    if len(text) > limit:
        raise LimitError(f"{what}: at most {limit:,} characters in the app, got {len(text):,}")
    return text


def _number(what: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LimitError(f"{what}: expected a number, got {value!r}") from None


def check_whole(what: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (a form number may arrive as a float or a string)."""
    number = _number(what, value)
    if not number.is_integer() or not low <= number <= high:
        raise LimitError(f"{what}: a whole number from {low:,} to {high:,} in the app, got {value!r}")
    return int(number)


def check_between(what: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in [low, high]."""
    number = _number(what, value)
    if not low <= number <= high:           # also refuses nan
        raise LimitError(f"{what}: a number from {low:g} to {high:g} in the app, got {value!r}")
    return number


def _check_value(key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(f"{key}: must be a finite number, got {value}")
    if isinstance(value, (int, float)) and key in CONFIG_CAPS:
        check_at_most(key, value, CONFIG_CAPS[key])
    elif isinstance(value, str):
        check_text(key, value, MAX_PROMPT if key == "data.sample_prompts" else MAX_TEXT)
    elif isinstance(value, list):
        check_at_most(f"{key} (number of items)", len(value), MAX_LIST)
        for item in value:
            _check_value(key, item)


def check_config_values(flat: dict[str, Any]) -> None:
    """``LimitError`` for the first ``{"section.key": value}`` beyond the app's bounds."""
    for key, value in flat.items():
        _check_value(key, value)
    total, every = sum(flat[f"{stage}.steps"] for stage in STAGES), flat["output.sample_every"]
    if every and total // every > MAX_SAMPLE_GRIDS:
        raise LimitError(f"output.sample_every: at least {math.ceil(total / MAX_SAMPLE_GRIDS):,} for {total:,} "
                         f"steps in the app (at most {MAX_SAMPLE_GRIDS:,} sample grids), got {every:,}")
