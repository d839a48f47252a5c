"""The trainer app with the toy world's CPU preset first: ``python -m tlcm_toy.trainer_app`` (same options
as ``tlcm-trainer``). "Train" then runs a real, small distillation out of the box on a CPU.

The CPU toy distils the committed toy teacher (``tlcm_toy/weights/teacher``, a 4 M-parameter SDXL-class
model of a procedural shapes world) with the values of ``tlcm_toy/toy.yaml`` — read from the file, the
same settings as ``python run.py demo`` — on 4000 toy prompts written into the app's home. Stages 3-4
(preference, DM + GAN) run a few steps with the toy scorer plugin when ``tlcm_toy/weights/scorer.safetensors``
exists, and are off otherwise.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tlcm_train.app import launch
from tlcm_train.app.commands import flatten, override
from tlcm_train.app.presets import GPU_PRESETS, PATH_KEYS, Preset
from tlcm_train.config import STAGES, Config, load_config, read_config_file

from .distill import TOY_CONFIG as TOY_YAML
from .scorer import DEFAULT_WEIGHTS as TOY_SCORER
from .scorer import PLUGIN as TOY_SCORER_PLUGIN

TOY_DIR = Path(__file__).resolve().parent
TOY_PROMPTS_NAME = "toy-world-prompts.txt"       # distinct from the tiny kit's 4-line toy-prompts.txt in the same cache
TOY_LATE_STEPS = {"mps": 20, "dm": 20}           # stages 3-4 on the toy when toy.yaml gives no steps for them
# Wall-clock seconds per step at batch 32 on an idle 2-core CPU (2 torch threads). MLCD 1.3 s: measured on
# the project's 2-core machine when idle. The others scaled from their CPU time relative to MLCD, measured
# on that machine under load (1 thread, 3 steps each: MLCD 3.4 s, LCD 2.7 s, DM + GAN 6.5 s; the preference
# term adds 0.2 s for the toy VAE decode and scorer) — estimates, within maybe 30 %.
TOY_SECONDS_PER_STEP = {"mlcd": 1.3, "lcd": 1.05, "mps": 1.15, "dm": 2.6}
TOY_OVERHEAD_S = 45          # estimate: imports, teacher, encoding 4000 prompts, sample grids, checkpoints


def app_home() -> Path:
    """The app's own folder (toy prompts): ``$TLCM_TRAINER_HOME`` or ``~/.cache/tlcm-trainer``."""
    return Path(os.environ.get("TLCM_TRAINER_HOME") or Path.home() / ".cache" / "tlcm-trainer").expanduser()


def toy_model() -> Path:
    """The CPU toy's base model: the committed toy teacher, its CLIP tokenizers generated on first use."""
    from .bench_teacher import DEFAULT_TEACHER, ensure_tokenizers
    return ensure_tokenizers(DEFAULT_TEACHER)


def toy_prompts() -> Path:
    """The toy's training prompts (English and Chinese), written once into the app's home."""
    from .distill import toy_prompts as write_once
    return write_once(app_home() / TOY_PROMPTS_NAME)


def toy_settings() -> dict[str, Any]:
    """The CPU toy's config values except the paths: every key ``toy.yaml`` sets (type-checked through
    ``Config``), then stages 3-4: a few steps with the toy scorer when its file exists, else 0 steps."""
    raw = read_config_file(TOY_YAML)
    yaml_keys = [f"{section}.{key}" for section, keys in raw.items() for key in (keys or {})]
    scorer = TOY_SCORER.is_file()
    late: dict[str, Any] = {"mps.scorer": TOY_SCORER_PLUGIN, "mps.scorer_weights": str(TOY_SCORER) if scorer else ""}
    for stage in ("mps", "dm"):
        late[f"{stage}.steps"] = ((raw.get(stage) or {}).get("steps") or TOY_LATE_STEPS[stage]) if scorer else 0
    config = flatten(load_config(TOY_YAML, [override(k, v) for k, v in
                                            {"model.path": "toy", "data.prompts": ["toy.txt"], **late}.items()]))
    return {key: config[key] for key in dict.fromkeys([*yaml_keys, *late]) if key not in PATH_KEYS}


def _toy() -> dict[str, Any]:
    return {"model.path": str(toy_model()), "data.prompts": [str(toy_prompts())], **toy_settings()}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies in it (as the README names files)."""
    root = TOY_DIR.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def toy_summary() -> str:
    """What the CPU toy trains and how long it takes (from ``toy.yaml`` and the measured step times)."""
    values = toy_settings()
    steps = {stage: values[f"{stage}.steps"] for stage in STAGES}
    scale = values["train.batch_size"] / 32
    seconds = TOY_OVERHEAD_S + sum(n * TOY_SECONDS_PER_STEP[s] * scale for s, n in steps.items())
    plan = f"{steps['mlcd']} MLCD + {steps['lcd']} LCD"
    if steps["mps"] or steps["dm"]:
        plan += f" + {steps['mps']} preference + {steps['dm']} DM/GAN steps (toy scorer)"
        late = ""
    else:
        plan += " steps"
        late = (f" Stages 3-4 (preference, DM + GAN) are off: they need the toy scorer "
                f"`{_shown(TOY_SCORER)}`, which is not there "
                "(`python -m tlcm_toy.scorer` builds it).")
    return (f"The trained toy teacher (4 M-parameter SDXL-class model of a shapes world, "
            f"{values['train.resolution']} px) distilled with `tlcm_toy/toy.yaml`: {plan} at batch "
            f"{values['train.batch_size']}. About {_duration(seconds)} on an idle 2-core CPU (MLCD ~1.3 s/step; "
            f"slower when other work shares the cores). A real but small distillation: compare 2-4 step "
            f"samples with the teacher in Try it (tick *Teacher baseline*: the toy teacher at DDIM 25 steps, "
            f"CFG {values.get('distill.guidance_scale', Config().distill.guidance_scale):g}). Not an SDXL LoRA.{late}")




TOY_PRESET = Preset("CPU toy", toy_summary, _toy)


def main(argv: list[str] | None = None) -> int:
    return launch.main(argv, presets={TOY_PRESET.name: TOY_PRESET, **GPU_PRESETS})


if __name__ == "__main__":
    sys.exit(main())
