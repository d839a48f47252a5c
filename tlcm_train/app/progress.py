"""What a run folder says about its run: state, step, it/s, ETA, loss curves, log tail, samples, LoRA.

Read only from the trainer's own files (``status.json``, ``config.yaml``, ``logs/metrics.jsonl``,
``logs/tensorboard``, ``samples/``, ``lora/``) plus the app's run record and log, each confined to the
output folder (``paths.inside``). A run that ended without a final status — crash, kill, config error —
is "failed", with the reason taken from its last error line.

A resumed run has no ``status.json`` until its first logged step (the app removes the old one at launch,
so a stale "finished" never shows), so until then its step is the one it resumes from: the trainer's
"resumed from ... at step N" log line, else the newest checkpoint's step the app noted at launch. The
trainer's progress bar redraws a step more than once; the log tail keeps the last redraw of each.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlcm_train.config import Config, ConfigError, load_config
from tlcm_train.export import EXPORT_NAMES

from .jobs import LOG_NAME, JobInfo
from .paths import files_inside, inside

LOG_TAIL_LINES = 40
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")      # tqdm's cursor moves
OOM_HINT = (" — the GPU ran out of memory: pick a smaller VRAM preset (8-bit AdamW, fp16, rank 32), keep "
            "gradient checkpointing on, batch 1, or sample less often")
LAUNCHER_ERROR = "subprocess.CalledProcessError"
PROGRESS_LINE = re.compile(r"^(?P<desc>[^|]*?):?\s+\d+%\|[^|]*\|\s*(?P<count>\d+/\d+)")    # a tqdm redraw
RESUMED_LINE = re.compile(r"resumed from \S+ at step (\d+)")
TENSORBOARD_DIR = "logs/tensorboard"      # tlcm_train.tracking writes it when tensorboard is installed


@dataclass
class RunView:
    """One poll of a run folder."""

    state: str                      # idle | starting | running | stopping | stopped | finished | failed
    step: int = 0
    total: int = 0
    it_per_s: float | None = None
    eta_s: float | None = None
    reason: str = ""
    log_tail: list[str] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    lora_files: dict[str, Path] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)    # {"step", "series", "loss"} rows
    resumed_from: int | None = None         # the step this run continues from (a resumed run)
    config: Config | None = None            # the run's config snapshot (``config.yaml``), once written
    tensorboard: Path | None = None         # the TensorBoard log folder, when the trainer writes one

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "stopping")


def _json(path: Path | None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def log_tail(path: Path | None, offset: int, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines written since ``offset``; tqdm's carriage-return redraws count as lines."""
    if path is None:
        return []
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(offset, size - 64_000))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    parts = [p.rstrip() for p in re.split(r"[\r\n]+", ANSI_ESCAPE.sub("", text))]
    return one_line_per_step([p for p in parts if p])[-lines:]


def one_line_per_step(lines: list[str]) -> list[str]:
    """Progress-bar redraws collapsed to the last one of each count (the trainer's bar redraws when a step
    ends, again with its loss, and once more when it closes), so the log shows one line per step."""
    last = {}
    for i, line in enumerate(lines):
        match = PROGRESS_LINE.match(line)
        if match:
            last[match.group("desc", "count")] = i
    return [line for i, line in enumerate(lines)
            if not (match := PROGRESS_LINE.match(line)) or last[match.group("desc", "count")] == i]


def failure_reason(tail: list[str], returncode: int | None) -> str:
    """The most telling line of a failed run: the trainer's own message, else its last exception (not the
    launcher's ``CalledProcessError``, which only repeats the command)."""
    own = [line for line in tail if line.startswith("tlcm-train: ") and not PROGRESS_LINE.match(line)]
    errors = [line for line in tail if ERROR_LINE.match(line) and not line.startswith(LAUNCHER_ERROR)]
    if own or errors:
        reason = (own or errors)[-1]
        return reason + (OOM_HINT if "out of memory" in reason.lower() else "")
    return f"the trainer exited with code {returncode}" if returncode else "the trainer ended without a final status"


def losses(path: Path | None) -> tuple[list[dict[str, Any]], float | None]:
    """Long-format loss rows from ``metrics.jsonl`` and the recent it/s (median of the last 10 steps)."""
    rows, speeds = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path else []
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue            # a line being written
        for key, value in record.items():
            if key.startswith("loss/"):
                rows.append({"step": record["step"], "series": key[5:], "loss": value})
        if "it_per_s" in record:
            speeds.append(record["it_per_s"])
    recent = sorted(speeds[-10:])
    return rows, (recent[len(recent) // 2] if recent else None)


_SNAPSHOTS: dict[tuple[str, int, int], Config | None] = {}


def snapshot(path: Path | None) -> Config | None:
    """The run's ``config.yaml`` (None while missing or unreadable), parsed once per version of the file."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SNAPSHOTS:
        try:
            _SNAPSHOTS[key] = load_config(path)
        except (ConfigError, OSError, ValueError):
            _SNAPSHOTS[key] = None
        while len(_SNAPSHOTS) > 64:
            _SNAPSHOTS.pop(next(iter(_SNAPSHOTS)))
    return _SNAPSHOTS[key]


def resumed_step(tail: list[str], record: Any) -> int | None:
    """The step a resumed run continues from: the trainer's own line, else the app's note at launch."""
    if record is None or not record.resume:
        return None
    found = [int(m.group(1)) for line in tail if (m := RESUMED_LINE.search(line))]
    return found[-1] if found else record.resume_step


def read_run(info: JobInfo) -> RunView:
    """Combine the process state with the trainer's files into one view."""
    root, record = info.output_dir, info.record
    status = _json(inside(root, "status.json"))
    tail = log_tail(inside(root, LOG_NAME), record.log_offset if record else 0)
    rows, speed = losses(inside(root, "logs/metrics.jsonl"))
    trainer_state = status.get("state")
    if info.alive:
        state = "stopping" if record and record.stop_requested else ("running" if trainer_state else "starting")
    elif trainer_state in ("finished", "stopped"):
        state = trainer_state
    elif record is None and trainer_state is None:
        state = "idle"
    elif record and record.stop_requested and trainer_state is None:
        state = "stopped"               # stopped while loading, before the first step
    else:
        state = "failed"
    config = snapshot(inside(root, "config.yaml"))
    resumed = resumed_step(tail, record)
    step = status.get("step", resumed or 0)
    total = status.get("total_steps") or (config.total_steps if config else 0)
    board = inside(root, TENSORBOARD_DIR)
    view = RunView(state, int(step), int(total), speed,
                   status.get("eta_s") if state in ("running", "stopping") else None, log_tail=tail,
                   samples=files_inside(root, "samples/step-*.png"), losses=rows, resumed_from=resumed,
                   config=config, tensorboard=board if board is not None and board.is_dir() else None)
    if state == "failed":
        view.reason = failure_reason(tail, record.returncode if record else None)
    found = {fmt: inside(root, Path("lora") / name) for fmt, name in EXPORT_NAMES.items()}
    view.lora_files = {fmt: path for fmt, path in found.items() if path is not None} if not view.active else {}
    return view
