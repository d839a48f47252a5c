"""Training runs on the toy teacher for the benchmarks: train (or reuse a finished run), branch a run from
another's checkpoint, and turn any checkpoint into a sampling pipeline through the core's LoRA loader."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from tlcm.files import atomic_write_text
from tlcm.generate import apply_loras
from tlcm_train.config import Config, load_config
from tlcm_train.export import export_lora

from .bench_teacher import load_teacher
from .distill import toy_config


ROOT = Path(__file__).resolve().parents[1]


def bench_parser(description: str, name: str, *, train_seeds: bool, noise_seeds: list[int]) -> argparse.ArgumentParser:
    """The arguments the toy benchmarks share: N, seeds, threads, the run folder, and where the results go
    (outputs/bench/<name> unless ``--out`` names the committed bench/results/<name>)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=250, help="prompts per row")
    if train_seeds:
        parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2], help="one training run per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=noise_seeds, help="noise seeds of the evaluation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench" / "toy", help="training runs")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / name,
                        help=f"results (.md + .json); the committed ones are bench/results/{name}")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    return parser


def write_results(record: dict, text: str, out: Path) -> None:
    """A benchmark's record (``out``.json) and its rendering (``out``.md), each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


def check_train_seeds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if len(args.train_seeds) < 2:
        parser.error("--train-seeds needs at least 2 seeds: the spread is over training runs")


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
