"""Training runs as subprocesses: one per output folder, outliving browser tabs (and the app itself).

Everything about a run lives in its output folder, so a reloaded page — or a restarted app — finds it
again: ``.tlcm-trainer.lock`` (created exclusively; holds the launcher's pid and start time, so a
recycled pid is not mistaken for it) exists while it runs; ``.tlcm-trainer.json`` records the command,
where this run's part of the log starts, whether Stop was pressed and the exit code;
``logs/trainer-app.log`` gets the trainer's stdout/stderr. Stop sends SIGINT to the trainer processes
(the launcher's children), which save a checkpoint and the LoRA and exit 0; a second Stop kills.

A fresh run over an earlier run's outputs starts only after the user confirmed it ("Start over", passed
on as ``--overwrite``); otherwise resuming is offered. The trainer's own one-line refusals (its folder
lock, say) become the failed run's reason. Resuming reads no checkpoint here: the trainer does; the app
only notes the step in the newest checkpoint folder's name, so the page shows where the run picks up
while the trainer is still loading.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tlcm_train.checkpoint import CHECKPOINT_RE, checkpoint_dirs
from tlcm_train.config import Config
from tlcm_train.run_folder import earlier_run_outputs

from .commands import LaunchOptions, build_argv

LOCK_NAME = ".tlcm-trainer.lock"
RECORD_NAME = ".tlcm-trainer.json"
LOG_NAME = "logs/trainer-app.log"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]     # holds the `tlcm_train` and `tlcm` packages


class JobError(RuntimeError):
    """A run cannot start or be controlled; the message is shown to the user."""


@dataclass
class RunRecord:
    """What the app knows about the last run it started in a folder (``.tlcm-trainer.json``)."""

    pid: int
    create_time: float
    argv: list[str]
    log_offset: int
    started: float
    resume: bool = False
    stop_requested: bool = False
    returncode: int | None = None
    resume_step: int | None = None      # the newest checkpoint's step when a resume started

    @classmethod
    def read(cls, output_dir: Path) -> "RunRecord | None":
        try:
            return cls(**json.loads((output_dir / RECORD_NAME).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, output_dir: Path) -> None:
        tmp = output_dir / (RECORD_NAME + ".tmp")
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        tmp.replace(output_dir / RECORD_NAME)


@dataclass
class JobInfo:
    """A folder's run as seen now."""

    output_dir: Path
    alive: bool
    record: RunRecord | None = None


def _process(pid: int, create_time: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one started at ``create_time`` and not a zombie."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _lock_owner(output_dir: Path) -> psutil.Process | None:
    try:
        held = json.loads((output_dir / LOCK_NAME).read_text(encoding="utf-8"))
        return _process(int(held["pid"]), float(held["create_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_owner(output_dir: Path, pid: int, create_time: float, *, exclusive: bool) -> None:
    """Write the lock in one step: ``exclusive`` creates it (``JobError`` if held), else replaces ours."""
    lock = output_dir / LOCK_NAME
    tmp = output_dir / f"{LOCK_NAME}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps({"pid": pid, "create_time": create_time}), encoding="utf-8")
    try:
        if not exclusive:
            tmp.replace(lock)
            return
        os.link(tmp, lock)
    except FileExistsError:
        owner = _lock_owner(output_dir)
        raise JobError(f"a run is already using {output_dir} (pid {owner.pid if owner else '?'}): "
                       "watch it, stop it, or choose another output folder") from None
    finally:
        tmp.unlink(missing_ok=True)


def has_checkpoint(output_dir: Path) -> bool:
    return any((output_dir / "checkpoints").glob("checkpoint-*[0-9]"))


def latest_checkpoint_step(output_dir: Path) -> int | None:
    """The step in the name of the newest checkpoint folder (what ``--resume latest`` continues unless
    that one is damaged), read from the name alone."""
    found = checkpoint_dirs(output_dir / "checkpoints")
    return int(CHECKPOINT_RE.match(found[-1].name).group(1)) if found else None


def refuse_fresh_over(output_dir: Path) -> None:
    """``JobError`` when ``output_dir`` holds an earlier run's outputs (the CLI's own list): a fresh run
    would replace them, so it needs the user's explicit "Start over"; resuming is offered first."""
    found = earlier_run_outputs(output_dir)
    if not found:
        return
    names = ", ".join(sorted({p.relative_to(output_dir).parts[0] for p in found}))
    if has_checkpoint(output_dir):
        raise JobError(f"{output_dir} holds an earlier run ({names}): press Resume latest to continue it, or tick "
                       "\"Start over\" and press Train to replace its outputs")
    raise JobError(f"{output_dir} holds an earlier run's outputs ({names}) and no checkpoint to resume: tick "
                   "\"Start over\" and press Train to replace them, or choose another output folder")


class JobManager:
    """Starts, watches and stops runs; safe to share between Gradio's worker threads."""

    def __init__(self):
        self._guard = threading.Lock()
        self.latest: Path | None = None       # the folder of the last run started here (reattach target)

    def info(self, output_dir: Path) -> JobInfo:
        """The run in ``output_dir``; clears a lock left by a process that is gone."""
        alive = _lock_owner(output_dir) is not None
        if not alive:
            (output_dir / LOCK_NAME).unlink(missing_ok=True)
        return JobInfo(output_dir, alive, RunRecord.read(output_dir))

    def active_run(self) -> str | None:
        """'a training run is active in <folder>' while the last run started here is alive, else None."""
        latest = self.latest
        if latest is not None and self.info(latest).alive:
            return f"a training run is active in {latest}"
        return None

    def _take_lock(self, output_dir: Path) -> None:
        """Create the lock atomically (hard link of a complete file), owned by this app until the trainer runs."""
        self.info(output_dir)               # drops a stale lock
        me = psutil.Process()
        _write_owner(output_dir, me.pid, me.create_time(), exclusive=True)

    def start(self, config: Config, launch: LaunchOptions, resume: bool = False, overwrite: bool = False) -> JobInfo:
        """Launch the trainer for ``config``: ``resume`` continues the folder's latest checkpoint; a fresh
        run over an earlier run's outputs needs ``overwrite`` (the user confirmed replacing them)."""
        output_dir = Path(config.output.dir).expanduser().resolve()
        argv = build_argv(config, launch, resume, overwrite)
        with self._guard:
            output_dir.mkdir(parents=True, exist_ok=True)
            self._take_lock(output_dir)
            try:
                if resume and not has_checkpoint(output_dir):
                    raise JobError(f"nothing to resume: {output_dir} has no checkpoints yet — press Train")
                if not resume and not overwrite:
                    refuse_fresh_over(output_dir)
                record = self._spawn(output_dir, argv, resume)
                _write_owner(output_dir, record.pid, record.create_time, exclusive=False)
            except BaseException:
                (output_dir / LOCK_NAME).unlink(missing_ok=True)
                raise
            self.latest = output_dir
        return self.info(output_dir)

    def _spawn(self, output_dir: Path, argv: list[str], resume: bool) -> RunRecord:
        log_path = output_dir / LOG_NAME
        log_path.parent.mkdir(parents=True, exist_ok=True)
        (output_dir / "status.json").unlink(missing_ok=True)     # the trainer rewrites it within a step
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
        with log_path.open("ab") as log:
            offset = log.tell()
            log.write(f"=== tlcm-trainer {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        record = RunRecord(proc.pid, psutil.Process(proc.pid).create_time(), argv, offset, time.time(), resume,
                           resume_step=latest_checkpoint_step(output_dir) if resume else None)
        record.write(output_dir)
        threading.Thread(target=self._reap, args=(proc, output_dir), daemon=True).start()
        return record

    def _reap(self, proc: subprocess.Popen, output_dir: Path) -> None:
        """Wait for the launcher, keep its exit code, release the folder."""
        code = proc.wait()
        with self._guard:
            record = RunRecord.read(output_dir)
            if record is not None and record.pid == proc.pid:
                record.returncode = code
                record.write(output_dir)
            owner = _lock_owner(output_dir)
            if owner is None or owner.pid == proc.pid:      # never release a lock a newer run holds
                (output_dir / LOCK_NAME).unlink(missing_ok=True)

    def process_ids(self, info: JobInfo) -> set[int]:
        """The launcher's pid and its children's (the trainer processes) while the run lives."""
        launcher = _process(info.record.pid, info.record.create_time) if info.alive and info.record else None
        if launcher is None:
            return set()
        try:
            return {launcher.pid, *(p.pid for p in launcher.children(recursive=True))}
        except psutil.Error:
            return {launcher.pid}

    def stop(self, output_dir: Path) -> str:
        """Ask the run to save and exit (SIGINT to the trainer processes); again = kill."""
        info = self.info(output_dir)
        if not info.alive or info.record is None:
            raise JobError(f"no run is active in {output_dir}")
        launcher = _process(info.record.pid, info.record.create_time)
        if launcher is None:
            raise JobError(f"the run in {output_dir} has just ended")
        again = info.record.stop_requested
        workers = launcher.children(recursive=True) or [launcher]
        for proc in workers:
            try:
                proc.send_signal(signal.SIGKILL if again else signal.SIGINT)
            except psutil.Error:
                pass
        info.record.stop_requested = True
        info.record.write(output_dir)
        return ("killed the trainer" if again else
                "stop requested: the trainer saves a checkpoint and the LoRA at the end of this step, then exits "
                "(press Stop again to kill it without saving)")
