"""Training runs on the toy teacher for the benchmarks: train (or reuse a finished run), branch a run from
another's checkpoint, and turn any checkpoint into a sampling pipeline through the core's LoRA loader."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tlcm.generate import apply_loras
from train.export import export_lora

from .bench_teacher import load_teacher
from .distill import toy_config


def finished(out: Path) -> bool:
    status = out / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("state") == "finished"


def train_run(out: Path, overrides: list[str], resume: str | Path | None = None, reuse: bool = True) -> Path:
    """Train the toy config + ``overrides`` into ``out`` (optionally starting from checkpoint ``resume``,
    e.g. another run's end of stage 2); a finished run already there is reused. Returns ``out``."""
    from train.loop import Trainer
    if reuse and finished(out):
        print(f"[bench] reusing finished run {out}", flush=True)
        return out
    torch.manual_seed(0)
    Trainer(toy_config(out, ["output.sample_every=0", "output.keep_checkpoints=20", *overrides])).run(
        resume=str(resume) if resume else None)
    return out


def wall_seconds(out: Path) -> float:
    """Wall time between the first and the last logged step of a run (its logs/metrics.jsonl)."""
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1]["time"] - rows[0]["time"] if rows else 0.0


def checkpoint(out: Path, step: int) -> Path:
    path = out / "checkpoints" / f"checkpoint-{step:08d}"
    if not (path / "student.safetensors").is_file():
        raise FileNotFoundError(f"no checkpoint at step {step} in {out} (set output.checkpoint_every to hit it)")
    return path


def student_pipe(checkpoint_dir: Path, alpha: float):
    """The teacher pipeline with the checkpoint's student merged in via a kohya export (the host path)."""
    files = export_lora(load_file(str(checkpoint_dir / "student.safetensors")), alpha, checkpoint_dir / "export",
                        ["kohya"], "fp32")
    pipe = load_teacher()
    apply_loras(pipe, [(str(files["kohya"]), 1.0)])
    return pipe
