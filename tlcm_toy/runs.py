"""Training runs on the toy teacher for the benchmarks: train (or reuse a finished run), branch a run from
another's checkpoint, and turn any checkpoint into a sampling pipeline through the core's LoRA loader."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from tlcm.generate import apply_loras
from tlcm_train.config import Config, load_config
from tlcm_train.export import export_lora

from .bench_teacher import load_teacher
from .distill import toy_config


def finished(out: Path) -> bool:
    status = out / "status.json"
    return status.is_file() and json.loads(status.read_text()).get("state") == "finished"


def acting_settings(config: Config) -> dict:
    """The config values that shape a run's optimisation: no output section, prompt files by their
    resolved paths, and no section of a stage that never ran (stage 3's section also serves stage 4's
    preference term)."""
    data = config.to_dict()
    data.pop("output")
    data["data"]["prompts"] = [str(Path(p).resolve()) for p in config.data.prompts]    # same files, any spelling
    if not config.dm.steps:
        data.pop("dm")
        if not config.mps.steps:
            data.pop("mps")
    return data


def train_run(out: Path, overrides: list[str], resume: str | Path | None = None, reuse: bool = True) -> Path:
    """Train the toy config + ``overrides`` into ``out`` (optionally starting from checkpoint ``resume``,
    e.g. another run's end of stage 2); a finished run already there is reused when it was trained with the
    same :func:`acting_settings`, and replaced when not. Returns ``out``. A code change, or new
    weights under the same path (toy scorer, latent LPIPS), is not detected: delete the run folder."""
    from tlcm_train.loop import Trainer
    config = toy_config(out, ["output.sample_every=0", "output.keep_checkpoints=20", *overrides])
    if reuse and finished(out):
        if acting_settings(load_config(out / "config.yaml")) == acting_settings(config):
            print(f"[bench] reusing finished run {out}", flush=True)
            return out
        print(f"[bench] {out} was trained with other settings: training it again", flush=True)
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(0)
    Trainer(config).run(resume=str(resume) if resume else None)
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
