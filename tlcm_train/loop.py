"""The training run: load once, cache prompts, then run the stages (``stages.py``) on one LoRA.

Multi-GPU / multi-node: launched by ``accelerate launch``; each process keeps a full frozen base UNet
and its own prompt shard. The UNet is **not** wrapped in DDP, because one step runs it under several
adapter states; instead the student's LoRA gradients are averaged across processes on a flat buffer
before every optimizer step (docs/trainer.md §6), which keeps the LoRA identical on all ranks — checked
at the end of every multi-process run. Every LR value is absolute: ``LambdaLR`` over a base lr of 1
returns the current stage's lr (with optional per-stage warm-up), so stage switches need no second
optimizer or LR schedule and resume exactly.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from tlcm.lora import BaseKind
from tlcm.models import load_sdxl_pipeline
from tlcm.models.device import DTYPE_NAMES
from tlcm.scheduler import TLCMScheduler

from .adapters import add_student, load_student_state_dict, require_student_active, student_state_dict
from .checkpoint import CheckpointError, load_checkpoint, resolve_resume, save_checkpoint
from .config import Config, save_config
from .diffusion import Denoiser
from .embeddings import encode_prompts, unload_text_encoders
from .export import export_lora
from .losses import build_distance
from .prompts import PromptStream, read_prompts
from .run_folder import CHECKPOINTS
from .samples import save_grid
from .stage_techniques import build_techniques, first_step_using
from .aux_grad import Logged
from .stages import PhaseHook, TrainingStage, build_stages, stage_at, stage_lr
from .tracking import Tracker

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": DTYPE_NAMES["fp32"], "fp16": DTYPE_NAMES["fp16"], "bf16": DTYPE_NAMES["bf16"]}   # accelerate names
HOLD_AT_STEP = "TLCM_TRAIN_HOLD_AT_STEP"
"""Test hook (environment variable, unset in normal use): after logging this step the run waits for a stop
signal, so a stop test knows the step it stops at instead of racing the loop (tests/test_app_jobs.py)."""


@dataclass
class RunResult:
    """How a run ended and where its outputs are."""

    state: str                       # finished | stopped
    step: int
    output_dir: Path
    losses: list[float] = field(default_factory=list)     # mean loss over processes, per step of this run
    lora_files: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None


class StopFlag:
    """SIGINT/SIGTERM ask for a clean stop (checkpoint + export) at the end of the current step; a second
    signal restores the default handler, so pressing Ctrl-C twice still kills the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> "StopFlag":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_optimizer(config: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (its fused CUDA kernel when every parameter is on a GPU: one launch per step instead of one per
    tensor, the same update), or bitsandbytes' 8-bit AdamW when asked for (and installed)."""
    kwargs = dict(lr=1.0, betas=(config.train.adam_beta1, config.train.adam_beta2), eps=config.train.adam_epsilon,
                  weight_decay=config.train.weight_decay)
    if config.train.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); "
                              "or use train.optimizer=adamw") from err
        return bnb.optim.AdamW8bit(params, **kwargs)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, **kwargs, fused=fused)


def average_gradients(params: list[torch.nn.Parameter], reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace each grad by its mean over processes (one collective on a flat buffer)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = reduce(torch.cat([g.flatten() for g in grads]))
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def lora_digest(state: dict[str, torch.Tensor]) -> int:
    """63-bit fingerprint of the LoRA weights (compared across ranks)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].float().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


class Trainer:
    """Builds everything from a ``Config`` and runs its stages; one instance per process. ``on_phase``
    hears the end of each part of a step (``stages.PhaseHook``; the memory benchmark's probe)."""

    def __init__(self, config: Config, accelerator=None, on_phase: PhaseHook | None = None):
        from accelerate import Accelerator
        self.config = config
        self.on_phase = on_phase
        # without CUDA, processes started by `accelerate launch --multi_gpu` talk over gloo on the CPU
        self.accelerator = accelerator or Accelerator(mixed_precision=config.train.mixed_precision,
                                                      cpu=not torch.cuda.is_available())
        acc = self.accelerator
        self.device = acc.device
        if self.device.type == "cuda" and config.train.allow_tf32:    # Ampere+: fp32 matmuls on tensor cores
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.output_dir = Path(config.output.dir).expanduser()
        self.checkpoint_root = self.output_dir / CHECKPOINTS
        self.prompts = read_prompts(config.data.prompts)           # fails fast, before loading the model
        if not Path(config.model.path).expanduser().exists():
            raise FileNotFoundError(f"model.path: no SDXL model at {config.model.path} (a local diffusers "
                                    "folder or single-file .safetensors)")

        torch.manual_seed(config.train.seed)        # same LoRA init on every rank
        self.generator = torch.Generator().manual_seed(config.train.seed + 7919 * (acc.process_index + 1))
        pipe = load_sdxl_pipeline(config.model.path, device=self.device, dtype=WEIGHT_DTYPES[config.train.mixed_precision],
                                  config=config.model.single_file_config)
        self.vae = pipe.vae.to("cpu", torch.float32)     # only sample grids decode; SDXL's VAE overflows in fp16
        self.stream = PromptStream(len(self.prompts), config.train.batch_size, config.train.seed,
                                   acc.process_index, acc.num_processes)
        res = config.train.resolution
        self.cache = encode_prompts(pipe, self.prompts, self.stream.shard, res, self.device)
        sample_prompts = config.data.sample_prompts if acc.is_main_process and config.output.sample_every else []
        self.sample_cond = (encode_prompts(pipe, sample_prompts, list(range(len(sample_prompts))), res, self.device)
                            .batch(range(len(sample_prompts)), self.device) if sample_prompts else None)
        unload_text_encoders(pipe)
        gc.collect()

        self.unet = pipe.unet
        self.params = add_student(self.unet, config.lora)
        if config.train.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()
        if config.train.compile:
            self.unet.compile()     # in place: parameter names, hence checkpoints and exports, stay the same
        self.denoiser = Denoiser(self.unet, dict(pipe.scheduler.config), self.device)
        self.base_kind = BaseKind.from_scheduler_config(pipe.scheduler.config)      # recorded in the exports
        self.sampler = TLCMScheduler.from_config(pipe.scheduler.config)
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_shape = (self.unet.config.in_channels, res // vae_scale, res // vae_scale)
        sync = (lambda params: average_gradients(params, lambda t: acc.reduce(t, reduction="mean"))
                ) if acc.num_processes > 1 else None
        self.techniques = build_techniques(config, self.denoiser, self.vae, self.latent_shape[-1], self.device, sync,
                                           self.prompts)
        self.stages: list[TrainingStage] = build_stages(config, self.latent_shape, self.denoiser.num_train_timesteps,
                                                        self.techniques, acc.num_processes)
        if not self.stages:
            raise ValueError("every stage has 0 steps: nothing to train (set mlcd.steps, lcd.steps, ...)")
        self.values: Logged = {}                 # the last step's per-term values, for logging
        self.distance = build_distance(config.distill)
        self.optimizer = acc.prepare(make_optimizer(config, self.params))
        warmup = config.train.warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                             lambda s: stage_lr(self.stages, s, warmup))
        self.step = 0
        self.tracker = Tracker(self.output_dir, config.total_steps) if acc.is_main_process else None

    # -- pieces -------------------------------------------------------------------------------------
    def stage(self, step: int | None = None) -> TrainingStage:
        """The stage that global ``step`` (default: the next one) belongs to."""
        return stage_at(self.stages, self.step if step is None else step)

    def _phase(self, name: str) -> None:
        if self.on_phase:
            self.on_phase(name)

    def train_step(self) -> torch.Tensor:
        """One optimizer step of the current stage over its ``accumulation`` micro-batches (the student's
        step on their mean objective, then the techniques' own steps on each micro-batch); returns this
        process's mean consistency loss and keeps every term's mean value in ``self.values``, both as
        detached device scalars (reading them waits for the device: ``run`` does so at logging steps only)."""
        stage = self.stage()
        losses, values, batches = [], {}, []
        for _ in range(stage.accumulation):
            indices = self.stream.next_batch()
            cond = self.cache.batch(indices, self.device)
            with self.accelerator.autocast():
                outcome = stage.objective(self.denoiser, cond, [self.prompts[i] for i in indices], self.distance,
                                          self.generator, self.on_phase)
            require_student_active(self.unet)
            self.accelerator.backward(outcome.objective / stage.accumulation)
            self._phase("backward")
            losses.append(outcome.loss.detach())
            for key, value in outcome.values.items():
                values[key] = values.get(key, 0.0) + value / stage.accumulation
            batches.append(outcome.batch)
        self.values = values
        if self.accelerator.num_processes > 1:
            average_gradients(self.params, lambda t: self.accelerator.reduce(t, reduction="mean"))
        if self.config.train.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, self.config.train.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._phase("optimizer")
        with self.accelerator.autocast():        # the techniques' own forwards in the run's precision too
            for batch in batches:
                self.values.update(stage.update_techniques(batch, self.on_phase))
        require_student_active(self.unet)
        self.step += 1
        return torch.stack(losses).mean()

    def save(self) -> Path:
        acc = self.accelerator
        return save_checkpoint(self.checkpoint_root, self.step, lora_state=student_state_dict(self.unet),
                               optimizer=self.optimizer, lr_schedule=self.lr_schedule, generator=self.generator,
                               prompt_position=self.stream.position, config_digest=self.config.digest(),
                               techniques={k: t.state_dict() for k, t in self.techniques.items()},
                               rank=acc.process_index, is_main=acc.is_main_process, barrier=acc.wait_for_everyone,
                               keep=self.config.output.keep_checkpoints)

    def resume(self, resume: str | None) -> Path | None:
        path = resolve_resume(resume, self.checkpoint_root)
        if path is None:
            return None
        state = load_checkpoint(path, load_lora=lambda sd: load_student_state_dict(self.unet, sd),
                                optimizer=self.optimizer, lr_schedule=self.lr_schedule, generator=self.generator,
                                rank=self.accelerator.process_index)
        for p in self.params:          # PEFT loads in the weights' dtype; keep fp32 masters
            p.data = p.data.float()
        if state.config_digest != self.config.digest():
            log.warning("resuming %s with a different training config than it was saved with; the run is not "
                        "an exact continuation", path)
        self.step, self.stream.position = state.step, state.prompt_position
        self._restore_techniques(state.techniques, path)
        return path

    def _restore_techniques(self, saved: dict, path: Path) -> None:
        """Load each technique's saved state. A technique whose first stage starts at or after the checkpoint
        has never trained, so a checkpoint without it (e.g. the end of stage 2, branched into stages 3-4)
        keeps its fresh initialisation; one that should have trained and is missing is an error."""
        for name, technique in self.techniques.items():
            if name in saved:
                try:
                    technique.load_state_dict(saved[name])
                except ValueError as err:
                    raise CheckpointError(f"{path} does not fit this run: {err}") from err
            elif self.step > first_step_using(self.config, name):
                raise CheckpointError(f"{path} holds no state for the {name!r} technique that this config trains "
                                      f"before step {self.step}; resume with the config the checkpoint was saved with")

    def sample(self) -> Path | None:
        if self.sample_cond is None:
            return None
        return save_grid(self.denoiser, self.sampler, self.vae, self.sample_cond, self.config.output.sample_steps,
                         self.latent_shape, self.config.output.sample_seed,
                         self.output_dir / "samples" / f"step-{self.step:08d}.png")

    def _stop_everywhere(self, requested: bool) -> bool:
        """Whether any process was asked to stop (one process: its own flag, without touching the device)."""
        if self.accelerator.num_processes == 1:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _check_ranks_agree(self) -> list[int]:
        digest = torch.tensor([lora_digest(student_state_dict(self.unet))], dtype=torch.int64, device=self.device)
        digests = [int(d) for d in self.accelerator.gather(digest).cpu()]
        if len(set(digests)) > 1:
            raise RuntimeError(f"student LoRA differs across processes (digests {digests}); gradient sync failed")
        return digests

    # -- the run ------------------------------------------------------------------------------------
    def run(self, resume: str | None = None) -> RunResult:
        acc, cfg = self.accelerator, self.config
        hold_at = int(os.environ.get(HOLD_AT_STEP) or -1)
        resumed = self.resume(resume)
        if acc.is_main_process:
            save_config(cfg, self.output_dir / "config.yaml")
            if resumed:
                log.info("resumed from %s at step %d", resumed, self.step)
        result = RunResult("finished", self.step, self.output_dir)
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not acc.is_main_process, desc="tlcm-train",
                   dynamic_ncols=True)
        pending: list[torch.Tensor] = []         # the losses of the steps since the last log, still on the device
        logged_step, logged_time = self.step, time.perf_counter()
        try:
            with StopFlag() as stop:
                while self.step < cfg.total_steps:
                    stage = self.stage().name
                    pending.append(self.train_step())
                    stopping = self._stop_everywhere(stop.requested)
                    bar.update(1)
                    if (self.step % cfg.output.log_every == 0 or stopping or self.step == hold_at
                            or self.step == cfg.total_steps):
                        means = acc.reduce(torch.stack(pending), reduction="mean").tolist()   # waits for the device
                        pending.clear()
                        result.losses.extend(means)
                        now = time.perf_counter()
                        bar.set_postfix(stage=stage, loss=f"{means[-1]:.4g}")
                        if self.tracker:
                            self.tracker.log(self.step, {**{k: float(v) for k, v in self.values.items()},
                                                         f"loss/{stage}": means[-1],
                                                         "lr": self.lr_schedule.get_last_lr()[0],
                                                         "it_per_s": (self.step - logged_step) / max(now - logged_time,
                                                                                                     1e-9)})
                            self.tracker.status("running", self.step, eta_s=bar.format_dict.get("elapsed", 0) /
                                                max(self.step - bar.initial, 1) * (cfg.total_steps - self.step))
                        logged_step, logged_time = self.step, now
                    if self.step == hold_at:           # the HOLD_AT_STEP test hook: wait for the stop signal
                        while not stop.requested:
                            time.sleep(0.05)
                        stopping = self._stop_everywhere(stop.requested)
                    if stopping:
                        result.state = "stopped"
                        break
                    if cfg.output.checkpoint_every and self.step % cfg.output.checkpoint_every == 0:
                        result.checkpoint = self.save()
                    if acc.is_main_process and cfg.output.sample_every and self.step % cfg.output.sample_every == 0:
                        self.sample()
        except BaseException:
            if self.tracker:
                self.tracker.status("failed", self.step)
            raise
        finally:
            bar.close()
        if result.checkpoint is None or not result.checkpoint.name.endswith(f"{self.step:08d}"):
            result.checkpoint = self.save()
        digests = self._check_ranks_agree()
        if acc.is_main_process:
            # a grid for the last step, unless the loop just made it (a stop breaks out before sampling)
            if cfg.output.sample_every and (self.step % cfg.output.sample_every or result.state == "stopped"):
                self.sample()
            result.lora_files = export_lora(student_state_dict(self.unet), cfg.lora.alpha, self.output_dir / "lora",
                                            cfg.output.formats, cfg.output.save_dtype, self.base_kind)
            self.tracker.status(result.state, self.step, rank_lora_digests=digests,
                                lora_files={k: str(v) for k, v in result.lora_files.items()})
            self.tracker.close()
        acc.wait_for_everyone()
        result.step = self.step
        return result
