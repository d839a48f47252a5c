"""Presets: the CPU toy (default: "Train" runs a real, small distillation out of the box on a CPU) and
24/16/12 GB GPU setups.

The CPU toy distils the committed toy teacher (``train/toy/weights/teacher``, a 4 M-parameter SDXL-class
model of a procedural shapes world) with the values of ``train/configs/toy.yaml`` — read from the file,
the same settings as ``python run.py demo`` — on 4000 toy prompts written into the app's home. Stages 3-4
(preference, DM + GAN) run a few steps with the toy scorer when ``train/toy/weights/scorer.safetensors``
exists, and are off otherwise.

A preset sets only the keys it is about; the GPU presets put every key the toy sets back to the paper's
value (stages 3-4 included, so ``mps.scorer_weights`` is then the user's to fill in), so switching toy →
GPU never trains SDXL at 32 px by accident. The GPU memory figures are arithmetic at batch 1
(bench/results/memory_stages.md: exact parameter counts, activations scaled from a mid-size model measured
on the CPU), not GPU measurements.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from train.config import STAGES, Config, load_config, read_config_file

from .commands import LaunchOptions, flatten, override

TOY_DIR = Path(__file__).resolve().parents[1] / "toy"
TOY_YAML = Path(__file__).resolve().parents[1] / "configs" / "toy.yaml"   # = train.toy.distill.TOY_CONFIG
TOY_SCORER = TOY_DIR / "weights" / "scorer.safetensors"                 # = train.preference.toy_scorer.DEFAULT_WEIGHTS
TOY_PROMPTS_NAME = "toy-world-prompts.txt"       # distinct from the tiny kit's 4-line toy-prompts.txt in the same cache
TOY_LATE_STEPS = {"mps": 20, "dm": 20}           # stages 3-4 on the toy when toy.yaml gives no steps for them
PATH_KEYS = ("model.path", "data.prompts", "output.dir")     # the user's; a preset never puts the toy's here
# Wall-clock seconds per step at batch 32 on an idle 2-core CPU (2 torch threads). MLCD 1.3 s: measured on
# the project's 2-core machine when idle. The others scaled from their CPU time relative to MLCD, measured
# on that machine under load (1 thread, 3 steps each: MLCD 3.4 s, LCD 2.7 s, DM + GAN 6.5 s; the preference
# term adds 0.2 s for the toy VAE decode and scorer) — estimates, within maybe 30 %.
TOY_SECONDS_PER_STEP = {"mlcd": 1.3, "lcd": 1.05, "mps": 1.15, "dm": 2.6}
CROP_16GB = 64               # latent window the smaller presets decode for the preference term (1024² → 128²)
TOY_OVERHEAD_S = 45          # estimate: imports, teacher, encoding 4000 prompts, sample grids, checkpoints


def app_home() -> Path:
    """The app's own folder (toy prompts): ``$TLCM_TRAINER_HOME`` or ``~/.cache/tlcm-trainer``."""
    return Path(os.environ.get("TLCM_TRAINER_HOME") or Path.home() / ".cache" / "tlcm-trainer").expanduser()


def toy_model() -> Path:
    """The CPU toy's base model: the committed toy teacher, its CLIP tokenizers generated on first use."""
    from train.toy.bench_teacher import DEFAULT_TEACHER, ensure_tokenizers
    return ensure_tokenizers(DEFAULT_TEACHER)


def toy_prompts() -> Path:
    """The toy's training prompts (English and Chinese), written once into the app's home."""
    from train.toy.distill import toy_prompts as write_once
    return write_once(app_home() / TOY_PROMPTS_NAME)


def toy_settings() -> dict[str, Any]:
    """The CPU toy's config values except the paths: every key ``toy.yaml`` sets (type-checked through
    ``Config``), then stages 3-4: a few steps with the toy scorer when its file exists, else 0 steps."""
    raw = read_config_file(TOY_YAML)
    yaml_keys = [f"{section}.{key}" for section, keys in raw.items() for key in (keys or {})]
    scorer = TOY_SCORER.is_file()
    late: dict[str, Any] = {"mps.scorer": "toy", "mps.scorer_weights": str(TOY_SCORER) if scorer else ""}
    for stage in ("mps", "dm"):
        late[f"{stage}.steps"] = ((raw.get(stage) or {}).get("steps") or TOY_LATE_STEPS[stage]) if scorer else 0
    config = flatten(load_config(TOY_YAML, [override(k, v) for k, v in
                                            {"model.path": "toy", "data.prompts": ["toy.txt"], **late}.items()]))
    return {key: config[key] for key in dict.fromkeys([*yaml_keys, *late]) if key not in PATH_KEYS}


def _toy() -> dict[str, Any]:
    return {"model.path": str(toy_model()), "data.prompts": [str(toy_prompts())], **toy_settings()}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies in it (as the README names files)."""
    root = TOY_DIR.parents[1]
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
                "(`python -m train.preference.toy_scorer` builds it).")
    return (f"The trained toy teacher (4 M-parameter SDXL-class model of a shapes world, "
            f"{values['train.resolution']} px) distilled with `train/configs/toy.yaml`: {plan} at batch "
            f"{values['train.batch_size']}. About {_duration(seconds)} on an idle 2-core CPU (MLCD ~1.3 s/step; "
            f"slower when other work shares the cores). A real but small distillation: compare 2-4 step "
            f"samples with the teacher in Try it. Not an SDXL LoRA.{late}")


@dataclass(frozen=True)
class Preset:
    """Config values (``section.key`` → value) and launch options one choice sets; ``about`` says what
    the preset trains (a function: the toy's depends on files that may appear while the app runs)."""

    name: str
    about: Callable[[], str]
    values: Callable[[], dict[str, Any]]
    launch: LaunchOptions = field(default_factory=LaunchOptions)

    @property
    def summary(self) -> str:
        return self.about()


def _gpu(**memory: Any) -> Callable[[], dict[str, Any]]:
    """Paper values for every key the toy sets (except the user's paths), then the memory-related keys."""
    def values() -> dict[str, Any]:
        paper = flatten(Config())
        chosen = {key: paper[key] for key in toy_settings()}
        chosen.update({key.replace("__", "."): value for key, value in memory.items()})
        return chosen
    return values


def _gpu_note() -> str:
    paper = Config()
    return (f" Paper schedule: {paper.mlcd.steps} MLCD + {paper.lcd.steps} LCD + {paper.mps.steps} preference + "
            f"{paper.dm.steps} DM/GAN steps. Stages 3-4 need the MPS scorer weights (the field under the stages; "
            "`train/preference/mps.py` says how to get them), or turn them off. Fill in your SDXL model.")


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("CPU toy", toy_summary, _toy),
    Preset("24 GB GPU", lambda: "SDXL at 1024 px: bf16 frozen UNet, rank 64, AdamW, batch 1, gradient "
           "checkpointing; the preference term decodes checkpointed in bf16 (stage 4 ≈ 17 GiB, "
           "bench/results/memory_stages.md)." + _gpu_note(), _gpu(train__mixed_precision="bf16", train__optimizer="adamw")),
    Preset("16 GB GPU", lambda: "As 24 GB with 8-bit AdamW (needs bitsandbytes); stages 3-4 score a random "
           f"quarter of each image (mps.decode_crop {CROP_16GB}: stage 4 ≈ 11.5 GiB instead of ≈ 14.4)." + _gpu_note(),
           _gpu(train__mixed_precision="bf16", train__optimizer="adamw8bit", mps__decode_crop=CROP_16GB)),
    Preset("12 GB GPU", lambda: "fp16 frozen UNet, rank 32, 8-bit AdamW (needs bitsandbytes); sample grids every "
           f"1000 steps (decoding costs memory); stages 3-4 score a random quarter of each image (mps.decode_crop "
           f"{CROP_16GB})." + _gpu_note(),
           _gpu(train__mixed_precision="fp16", train__optimizer="adamw8bit", lora__rank=32, lora__alpha=4.0,
                output__sample_every=1000, mps__decode_crop=CROP_16GB)),
)}
DEFAULT_PRESET = "CPU toy"
