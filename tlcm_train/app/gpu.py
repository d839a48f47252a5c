"""GPU memory of a run, read from outside its processes: the trainer runs in its own processes and writes
no memory figures, so the app asks the NVIDIA driver (``nvidia-smi``), as a user watching the run would.

The trainer's processes are found by pid among the GPU's compute processes. Inside a container the driver
may report pids of another namespace; then no pid matches and the whole GPU's use is shown instead, and
said so. Peaks are what the app saw at its polls (at most one query per ``INTERVAL_S``), not the
allocator's own peak, which only the trainer's process could read. Without ``nvidia-smi`` (no NVIDIA GPU,
or none visible) nothing is shown.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable

MIB = 2**20
INTERVAL_S = 3.0
APPS_QUERY = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
GPUS_QUERY = ["--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class GpuMemory:
    """One reading: bytes in use (by ``scope``) and the GPUs' total."""

    used: int
    total: int
    scope: str          # "trainer processes" | "whole GPU"


def parse_apps(text: str) -> dict[int, int]:
    """``nvidia-smi --query-compute-apps=pid,used_memory`` CSV → {pid: bytes} (a pid on several GPUs: summed)."""
    found: dict[int, int] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            found[int(parts[0])] = found.get(int(parts[0]), 0) + int(parts[1]) * MIB
    return found


def parse_gpus(text: str) -> list[tuple[int, int]]:
    """``nvidia-smi --query-gpu=index,memory.used,memory.total`` CSV → [(used bytes, total bytes)] per GPU."""
    found = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            found.append((int(parts[1]) * MIB, int(parts[2]) * MIB))
    return found


def _smi(args: list[str]) -> str:
    done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=5)
    return done.stdout if done.returncode == 0 else ""


def read_gpu_memory(pids: set[int], smi: Callable[[list[str]], str] | None = None) -> GpuMemory | None:
    """The memory ``pids`` hold on the GPUs, else the GPUs' whole use; None without a readable NVIDIA GPU."""
    if smi is None:
        if shutil.which("nvidia-smi") is None:
            return None
        smi = _smi
    try:
        gpus = parse_gpus(smi(GPUS_QUERY))
        apps = parse_apps(smi(APPS_QUERY)) if pids else {}
    except (OSError, subprocess.SubprocessError):
        return None
    if not gpus:
        return None
    total = sum(t for _, t in gpus)
    mine = [used for pid, used in apps.items() if pid in pids]
    if mine:
        return GpuMemory(sum(mine), total, "trainer processes")
    return GpuMemory(sum(u for u, _ in gpus), total, "whole GPU")


class GpuWatch:
    """Now and peak per run (keyed by the caller, e.g. folder and launcher pid), at most one query per
    ``interval`` s; shared by every page, so each poll of each page does not start ``nvidia-smi``."""

    def __init__(self, reader: Callable[[set[int]], GpuMemory | None] = read_gpu_memory,
                 interval: float = INTERVAL_S):
        self._reader, self._interval = reader, interval
        self._guard = threading.Lock()
        self._last: dict[object, tuple[float, GpuMemory | None]] = {}
        self._peak: dict[object, int] = {}

    def reading(self, run: object, pids: set[int], active: bool) -> tuple[GpuMemory, int] | None:
        """(latest reading, peak bytes) for ``run``; it is read again only while ``active``."""
        with self._guard:
            at, last = self._last.get(run, (0.0, None))
            if active and time.monotonic() - at >= self._interval:
                last = self._reader(pids)
                self._last[run] = (time.monotonic(), last)
                if last is not None:
                    self._peak[run] = max(self._peak.get(run, 0), last.used)
            if last is None:
                return None
            return last, self._peak.get(run, last.used)


def memory_text(reading: tuple[GpuMemory, int] | None, active: bool) -> str:
    """One line for the status, or "" without a reading."""
    if reading is None:
        return ""
    now, peak = reading
    gib = lambda n: f"{n / 2**30:.1f} GiB"     # noqa: E731
    head = f"GPU memory ({now.scope}): {gib(now.used)} now · " if active else f"GPU memory ({now.scope}): "
    return f"{head}peak {gib(peak)} seen · of {gib(now.total)}"
