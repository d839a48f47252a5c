"""Run telemetry: scalars to TensorBoard when it is installed, always to ``logs/metrics.jsonl``, and a
``status.json`` (state, step, total, ETA) that front-ends such as the trainer app can poll.

The JSONL log exists with or without TensorBoard, so curves can be read back by any tool.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:      # torch's writer needs the tensorboard package
        return None
    return SummaryWriter(str(log_dir))


class Tracker:
    """Main-process metrics sink (construct only on rank 0)."""

    def __init__(self, output_dir: Path, total_steps: int):
        self.output_dir = output_dir
        self.log_dir = output_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.tensorboard = _tensorboard_writer(self.log_dir / "tensorboard")
        self._jsonl = (self.log_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self._jsonl.flush()
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)

    def status(self, state: str, step: int, **extra: Any) -> None:
        """Atomically replace ``status.json`` (running / stopped / finished / failed)."""
        path = self.output_dir / "status.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"state": state, "step": step, "total_steps": self.total_steps,
                                   "time": time.time(), **extra}), encoding="utf-8")
        tmp.replace(path)

    def close(self) -> None:
        self._jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
