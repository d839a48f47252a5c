"""Training configuration: one YAML or TOML file, ``section.key=value`` overrides, strict validation.

Defaults are the paper's (TLCM §5.1, Algorithms 1-2): M = 8 segments, CFG w = 8, skip 20, stage 1 lr
1e-4, stage 2 lr 1e-5 with q = 4 student and p = 3 teacher steps, LoRA rank 64 on TLCM's targets.
Unknown keys and wrong types fail with the offending key named, so a typo never trains silently with a
default.

The schema is declared in the dataclasses: each field's type (read by a small type-driven builder), its
default and its rule (``setting(default, check=...)``); ``Config.validate`` applies the declared rules and
then the few that relate several fields. A schema library (pydantic) would do the same but is a version
that hosts and Gradio pin themselves, and the trainer installs into such environments. ``lora.alpha`` defaults to 8 because the official TLCM loader ignores the saved alpha and
applies 8/64 (docs/trainer.md §8); other values are exported exactly but need a loader that reads alpha.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

from tlcm.files import atomic_write_text
from tlcm.schedules import MAX_STEPS, MIN_STEPS, STEP_RANGE_TEXT

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
DISTANCES = ("l2", "huber", "latent_lpips")
STAGES = ("mlcd", "lcd", "mps", "dm")
# ``mps.scorer``: the paper's MPS, or a plugin ``module:OBJECT`` naming a ScorerPlugin (tlcm_train.preference.scorer)
SCORER_PLUGIN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
SCORER_DTYPES = ("auto", "fp32", "fp16", "bf16")
DECODE_DTYPES = ("auto", "fp32", "bf16")
DECODE_CHECKPOINTS = ("none", "unit")
FAKE_DATA = ("rollout", "one_step")
GAN_REAL = ("teacher", "rollout")
GAN_LOSSES = ("standard", "hinge")
DISC_BACKBONES = ("frozen", "lora")


class ConfigError(ValueError):
    """A configuration file or override is unreadable, unknown or out of range."""


@dataclass(frozen=True)
class Check:
    """A rule one config value must follow, declared beside its field; ``rule`` is what the error says."""

    test: Callable[[Any], bool]
    rule: str


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f"must be >= {low}")


def above(low: float) -> Check:
    return Check(lambda v: v > low, f"must be > {low}")


def between(low: float, high: float) -> Check:
    return Check(lambda v: low <= v <= high, f"must be in [{low}, {high}]")


def one_of(choices: tuple[str, ...]) -> Check:
    return Check(lambda v: v in choices, f"one of {choices}")


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            check: Check | None = None) -> Any:
    """A config field: its default (``factory`` for lists) and the rule its value must follow."""
    metadata = {"check": check} if check else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


NON_EMPTY_LIST = Check(lambda v: v is None or len(v) > 0, "must be null (TLCM targets) or a non-empty list")
SAMPLE_STEPS = Check(lambda v: all(MIN_STEPS <= s <= MAX_STEPS for s in v), f"each in {STEP_RANGE_TEXT}")
FORMATS = ("kohya", "diffusers", "peft")
SAVE_DTYPES = ("fp16", "bf16", "fp32")


@dataclass
class ModelConfig:
    path: str = ""                      # local diffusers SDXL folder or single-file .safetensors
    single_file_config: str | None = None   # diffusers folder of configs for a non-standard single file


@dataclass
class DataConfig:
    prompts: list[str] = setting(factory=list)       # .txt / .jsonl / .csv files
    sample_prompts: list[str] = setting(factory=lambda: ["a photo of a cat", "a red car in the snow"])


@dataclass
class LoraConfig:
    rank: int = setting(64, check=at_least(1))
    alpha: float = setting(8.0, check=above(0))
    target_modules: list[str] | None = setting(None, check=NON_EMPTY_LIST)    # None: TLCM's 14 target suffixes


@dataclass
class DistillConfig:
    num_segments: int = setting(8, check=between(1, 100))           # M: milestones of the TLCM grid
    guidance_scale: float = setting(8.0, check=Check(lambda v: v >= 1, "must be >= 1 (1 = no CFG)"))  # teacher CFG w
    distance: str = setting("l2", check=one_of(DISTANCES))
    huber_c: float = setting(0.001, check=above(0))                  # pseudo-Huber c (used when distance = huber)
    lpips_weights: str = ""             # latent LPIPS .safetensors (used when distance = latent_lpips)


STAGE_STEPS = Check(lambda v: v >= 0, "must be >= 0 (0 skips the stage)")
# A stage's batch: samples per optimizer step over all processes, reached by gradient accumulation of
# train.batch_size per process; 0 = one micro-batch per process per step (no accumulation).
STAGE_BATCH = Check(lambda v: v >= 0, "must be >= 0 (0 = train.batch_size per process, no accumulation)")


@dataclass
class MlcdConfig:
    steps: int = setting(12000, check=STAGE_STEPS)
    lr: float = setting(1e-4, check=above(0))
    batch_size: int = setting(0, check=STAGE_BATCH)       # the paper gives none for stages 1-2
    skip: int = setting(20, check=at_least(1))      # t_n = t_m - skip (and < the segment length: validate)


@dataclass
class LcdConfig:
    steps: int = setting(2000, check=STAGE_STEPS)
    lr: float = setting(1e-5, check=above(0))
    batch_size: int = setting(0, check=STAGE_BATCH)
    student_steps: int = setting(4, check=at_least(1))    # q: uniform student rollout to ẑ0
    teacher_steps: int = setting(3, check=at_least(1))    # p: teacher CFG-DDIM steps over one segment
    rollout_eta: float = setting(1.0, check=between(0.0, 1.0))   # 1: official fresh-noise TLCM sampler, 0: deterministic


SCORER = Check(lambda v: v == "mps" or bool(SCORER_PLUGIN.match(v)), "'mps' or a scorer plugin 'module:OBJECT'")
TERM_WEIGHT = Check(lambda v: v >= 0, "must be >= 0 (0 = off)")


@dataclass
class MpsConfig:
    """Stage 3: the LCD loss plus the preference hinge loss of Eq. 11 on the decoded student x̂0."""
    steps: int = setting(500, check=STAGE_STEPS)
    lr: float = setting(1e-5, check=above(0))
    batch_size: int = setting(8, check=STAGE_BATCH)       # TLCM §5.1: MPS at batch 8
    weight: float = setting(1.0, check=TERM_WEIGHT)   # of the preference term (0 = off); stays on in stage 4
    margin: float = 16.0                # s0 (positive prompt); unrelated prompts get margin 0
    scorer: str = setting("mps", check=SCORER)     # mps (Kwai-Kolors/MPS state dict) | module:OBJECT (a ScorerPlugin)
    scorer_weights: str = ""            # local weights file of the scorer
    # auto (fp16 on CUDA, as MPS ships; fp32 on CPU) | fp32 | fp16 | bf16
    scorer_dtype: str = setting("auto", check=one_of(SCORER_DTYPES))
    # unit: checkpoint every decoder resnet/upsampler (exact) | none
    decode_checkpoint: str = setting("unit", check=one_of(DECODE_CHECKPOINTS))
    # auto (bf16 on a bf16 GPU, else fp32) | fp32 | bf16 (fp16 overflows)
    decode_dtype: str = setting("auto", check=one_of(DECODE_DTYPES))
    # > 0: decode a random latent window of this side (an approximation)
    decode_crop: int = setting(0, check=Check(lambda v: v >= 0, "0 (whole image) or a latent window side"))


@dataclass
class DmConfig:
    """Stage 4: the LCD loss plus data-free distribution matching (Eq. 12) and the adversarial loss (Eq. 13)."""
    steps: int = setting(1000, check=STAGE_STEPS)
    lr: float = setting(1e-5, check=above(0))
    batch_size: int = setting(4, check=STAGE_BATCH)       # TLCM §5.1: DMD + GAN at batch 4
    dmd_weight: float = setting(1.0, check=TERM_WEIGHT)
    fake_rank: int = setting(64, check=at_least(1))       # the fake-score LoRA on the same frozen base
    fake_alpha: float = setting(8.0, check=above(0))
    fake_lr: float = setting(1e-5, check=above(0))
    fake_updates: int = setting(1, check=at_least(1))     # fake-score updates per micro-batch (per student step at 0 accumulation)
    # fake score's ε-MSE data: rollout (the paper's ẑ0, with Eq. 12) | one_step (DMD2's x̂0); on the toy over 3
    # training seeds neither is better (bench/results/toy_fake_data.md), so the paper's choice is the default
    fake_data: str = setting("rollout", check=one_of(FAKE_DATA))
    gan_weight: float = setting(0.1, check=TERM_WEIGHT)   # PCM's adv_weight
    disc_lr: float = setting(1e-4, check=above(0))        # discriminator heads (TLCM §5.1)
    # D's real samples: teacher (CFG-DDIM from z_t) | rollout (Eq. 13's ẑ0)
    gan_real: str = setting("teacher", check=one_of(GAN_REAL))
    gan_teacher_steps: int = setting(4, check=at_least(1))   # teacher CFG-DDIM steps that make the "real" samples
    # standard: Eq. 13's log loss (D: −log σ(real) − log(1 − σ(fake)); student: −log σ(fake)) | hinge (PCM's)
    gan_loss: str = setting("standard", check=one_of(GAN_LOSSES))
    # D's backbone, the base UNet's encoder: frozen (PCM; heads only) | lora (a LoRA on it trains with the heads)
    disc_backbone: str = setting("frozen", check=one_of(DISC_BACKBONES))
    disc_rank: int = setting(16, check=at_least(1))       # disc_backbone: lora only
    disc_alpha: float = setting(16.0, check=above(0))


@dataclass
class TrainConfig:
    batch_size: int = setting(1, check=at_least(1))                 # per process
    resolution: int = setting(1024, check=Check(lambda v: v >= 8 and v % 8 == 0,
                                                "must be a positive multiple of 8"))     # pixels (square)
    mixed_precision: str = setting("no", check=one_of(MIXED_PRECISION))
    gradient_checkpointing: bool = True
    allow_tf32: bool = True             # on CUDA: TF32 matmuls/convolutions for the fp32 parts (Ampere and newer)
    # torch.compile of the UNet's forward (the student, teacher and fake-score passes; one graph per adapter
    # state): the first steps wait for the compiler, long runs gain; off by default
    compile: bool = False
    optimizer: str = setting("adamw", check=one_of(OPTIMIZERS))
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = setting(1.0, check=Check(lambda v: v >= 0, "must be >= 0 (0 = no clipping)"))
    warmup_steps: int = setting(0, check=at_least(0))      # linear warm-up at the start of each stage
    seed: int = 0


@dataclass
class OutputConfig:
    dir: str = "tlcm-train-out"
    checkpoint_every: int = setting(500, check=Check(lambda v: v >= 0, "must be >= 0 (0 = only at the end)"))
    keep_checkpoints: int = setting(3, check=at_least(1))
    sample_every: int = setting(500, check=Check(lambda v: v >= 0, "must be >= 0 (0 = off)"))
    sample_steps: list[int] = setting(factory=lambda: [2, 4, 8], check=SAMPLE_STEPS)
    sample_seed: int = 0
    log_every: int = setting(1, check=at_least(1))
    formats: list[str] = setting(factory=lambda: list(FORMATS),
                                 check=Check(lambda v: set(v) <= set(FORMATS), f"a subset of {FORMATS}"))
    save_dtype: str = setting("fp16", check=one_of(SAVE_DTYPES))   # dtype of the exported LoRA files


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    mlcd: MlcdConfig = field(default_factory=MlcdConfig)
    lcd: LcdConfig = field(default_factory=LcdConfig)
    mps: MpsConfig = field(default_factory=MpsConfig)
    dm: DmConfig = field(default_factory=DmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def stage_steps(self) -> list[tuple[str, int]]:
        """(stage name, steps) in training order: MLCD → LCD → MPS → DM + GAN."""
        return [(name, getattr(self, name).steps) for name in STAGES]

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps in self.stage_steps())

    def stage_spans(self) -> list[tuple[str, int, int]]:
        """(stage, its first global step, its step count) in training order: where each stage begins and ends."""
        spans, start = [], 0
        for name, steps in self.stage_steps():
            spans.append((name, start, steps))
            start += steps
        return spans

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Hash of everything that shapes the optimisation (not output cadence), checked on resume."""
        data = self.to_dict()
        data.pop("output")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> "Config":
        """Every field's declared rule, then the rules that relate several fields; returns self."""
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            for f in dataclasses.fields(values):
                check, value = f.metadata.get("check"), getattr(values, f.name)
                if check is not None and not check.test(value):
                    raise ConfigError(f"{section.name}.{f.name}: {check.rule}, got {value!r}")

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{key}: {msg}")
        need(bool(self.model.path), "model.path", "required (a local SDXL diffusers folder or .safetensors file)")
        need(bool(self.data.prompts), "data.prompts", "required (one or more .txt/.jsonl/.csv prompt files)")
        need(self.distill.distance != "latent_lpips" or bool(self.distill.lpips_weights), "distill.lpips_weights",
             "required when distill.distance=latent_lpips (train one with `python -m tlcm_train.lpips train`)")
        segment = 1000 // self.distill.num_segments
        need(self.mlcd.skip < segment, "mlcd.skip", f"must be in [1, {segment}) (segment length)")
        need(self.total_steps > 0, "mlcd/lcd/mps/dm.steps", "nothing to train: every stage has 0 steps")
        need(not (self.mps.steps or self.dm.steps) or self.mps.weight == 0 or bool(self.mps.scorer_weights),
             "mps.scorer_weights", "required for the preference loss (stages mps and dm): a local MPS state dict "
             "(see tlcm_train/preference/mps.py) or the scorer plugin's weights; or set mps.weight=0 / mps.steps=0 "
             "and dm.steps=0")
        return self


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against a dataclass field type (int/float/bool/str, list[...], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):      # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid in {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML or TOML config file, with readable errors."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"{path}: config files must be {', '.join(CONFIG_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot parse ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``section.key=value`` override in place; the value is parsed as YAML (``1e-4``, ``[2, 4]``)."""
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {override!r}: expected section.key=value, e.g. mlcd.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: cannot parse the value ({err})") from err
    section = data.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"override {override!r}: {parts[0]} is not a section")
    section[parts[1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- file <- overrides, type-checked and validated."""
    data = read_config_file(path) if path is not None else {}
    for override in overrides:
        apply_override(data, override)
    return _build(Config, data, "").validate()


def save_config(config: Config, path: str | Path) -> Path:
    """Write ``config`` as YAML (the snapshot kept beside the outputs; loadable by ``load_config``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
