"""Checkpoints hold no pickle and are verified; one output folder holds one run (tiny SDXL kit, CLI in-process
unless the point is a second process). Every run here is 1-3 optimizer steps."""
from __future__ import annotations

import json
import os
import pickle
import pickletools
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tlcm.testing.build import build_tiny_sdxl
from tlcm_train import checkpoint as ckpt
from tlcm_train.checkpoint import CheckpointError, load_checkpoint, verify_checkpoint, write_manifest
from tlcm_train.cli import main as cli_main
from tlcm_train.loop import Trainer
from tlcm_train.run_folder import LOCK_NAME, RunFolderError, claim_output
from tlcm_train.state_files import flatten_state, load_state, save_state, unflatten_state

REPO = Path(__file__).resolve().parents[1]
LAST = "checkpoint-00000003"
pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores


class Payload:
    """Unpickling this creates ``marker``: what a planted file could do instead of something worse."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_kit")
    (root / "prompts.txt").write_text("a red cat\na blue dog\na green car\na yellow house\n")
    return build_tiny_sdxl(root / "kit"), root / "prompts.txt"


def argv(kit, out: Path, *extra: str) -> list[str]:
    """CLI arguments of a 3-step tiny run (MLCD 2 + LCD 1) that checkpoints every step and keeps 3."""
    paths, prompts = kit
    sets = [f"model.path={paths.diffusers}", f"data.prompts=[{prompts}]", "lora.rank=4", "lora.alpha=4",
            "lora.target_modules=[to_q, to_v]", "distill.num_segments=4", "mlcd.steps=2", "lcd.steps=1",
            "mps.steps=0", "dm.steps=0", "mlcd.lr=1e-3", "lcd.lr=1e-3", "train.max_grad_norm=0",
            "train.resolution=64", "train.batch_size=2", "output.sample_every=0", "output.checkpoint_every=1",
            "output.keep_checkpoints=3", "output.formats=[peft]"]
    return [a for s in sets for a in ("--set", s)] + ["--output-dir", str(out), *extra]


@pytest.fixture(scope="module")
def reference(kit, tmp_path_factory) -> Path:
    """An uninterrupted run's folder: checkpoints 1, 2, 3."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli_main(argv(kit, out)) == 0
    return out


def lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "student.safetensors"))


def assert_same_lora(a: Path, b: Path) -> None:
    x, y = lora(a), lora(b)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def one_error_line(err: str) -> str:
    """The CLI's message: one ``tlcm-train:`` line, no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("tlcm-train:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def copy_checkpoints(reference: Path, out: Path, steps=(1, 2, 3)) -> Path:
    for step in steps:
        name = f"checkpoint-{step:08d}"
        shutil.copytree(reference / "checkpoints" / name, out / "checkpoints" / name)
    return out / "checkpoints"


# -- flatten / unflatten ----------------------------------------------------------------------------------

def assert_identical(a, b, path="") -> None:
    """Same types all the way down (tuples, int keys), tensors equal in dtype, shape and value."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}/{k!r}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}/{i}")
    else:
        assert a == b or (a != a and b != b), path


def test_adamw_and_rng_states_round_trip_exactly(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4, dtype=torch.float64))]
    optimizer = torch.optim.AdamW(params, lr=0.1, betas=(0.8, 0.95), weight_decay=0.01)
    def step(group, opt):
        opt.zero_grad()
        (group[0].square().sum() + group[1].sum()).backward()
        opt.step()
    step(params, optimizer)
    step(params, optimizer)
    extra = {"__odd": None, 7: (True, float("inf"), "s"), "half": torch.ones(2, dtype=torch.bfloat16),
             "mask": torch.tensor([True, False]), "scalar": torch.tensor(3, dtype=torch.int64)}
    state = {"optimizer": optimizer.state_dict(), "extra": extra}
    save_state(tmp_path, "state", state)
    back = load_state(tmp_path, "state")
    assert_identical(state, back)
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple) and 0 in back["optimizer"]["state"]

    # the restored state drives the same next step
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = torch.optim.AdamW(twin, lr=0.1)
    restored.load_state_dict(back["optimizer"])
    step(params, optimizer)
    step(twin, restored)
    assert all(torch.equal(p, q) for p, q in zip(params, twin))

    generator = torch.Generator().manual_seed(3)
    np.random.normal()                                  # numpy now holds a cached gaussian, part of its state
    save_state(tmp_path, "rng", ckpt._rng_state(generator))

    def draws():
        return (random.random(), np.random.random(), np.random.normal(), torch.rand(2).tolist(),
                torch.rand(2, generator=generator).tolist())
    first = draws()
    ckpt._set_rng_state(load_state(tmp_path, "rng"), generator)
    assert draws() == first
    skeleton, tensors = flatten_state(ckpt._rng_state(generator))
    assert_identical(unflatten_state(json.loads(json.dumps(skeleton)), tensors)["python"], random.getstate())


# -- damaged checkpoints ----------------------------------------------------------------------------------

def truncate_all(folder: Path) -> None:
    for file in folder.iterdir():
        if file.name != "manifest.json":
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def flip_a_byte(folder: Path) -> None:
    file = folder / "student.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF                                    # same size, still a loadable safetensors file
    file.write_bytes(bytes(data))


def half_written(folder: Path) -> None:
    truncate_all(folder)
    (folder / "manifest.json").unlink()
    folder.rename(folder.with_name(folder.name + ".tmp"))


DAMAGE = {"truncated": (truncate_all, "truncated"), "flipped": (flip_a_byte, "sha256"),
          "no manifest": (lambda folder: (folder / "manifest.json").unlink(), "no manifest.json"),
          "half-written": (half_written, "half-written")}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_latest_skips_a_damaged_newest_checkpoint_and_continues_exactly(kit, reference, tmp_path, caplog,
                                                                               damage):
    damage_it, why = DAMAGE[damage]
    out = tmp_path / "run"
    damage_it(copy_checkpoints(reference, out) / LAST)
    assert cli_main(argv(kit, out, "--resume", "latest")) == 0
    assert any(LAST in r.getMessage() and why in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert logged_steps(out) == [3]                     # resumed from checkpoint 2, not from scratch
    assert_same_lora(out / "checkpoints" / LAST, reference / "checkpoints" / LAST)
    verify_checkpoint(out / "checkpoints" / LAST)


def test_no_intact_checkpoint_and_a_damaged_explicit_one_are_one_line_errors(kit, reference, tmp_path, capsys,
                                                                            monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("an unusable checkpoint must be refused before the model loads")
    monkeypatch.setattr(Trainer, "__init__", no_model)
    out = tmp_path / "run"
    root = copy_checkpoints(reference, out, steps=(2, 3))
    flip_a_byte(root / LAST)
    assert cli_main(argv(kit, out, "--resume", str(root / LAST))) == 2
    assert "sha256" in one_error_line(capsys.readouterr().err)
    with pytest.raises(CheckpointError, match="sha256"):          # loading verifies by itself, before using anything
        load_checkpoint(root / LAST, load_lora=None, optimizer=None, lr_schedule=None, generator=None, rank=0)
    truncate_all(root / "checkpoint-00000002")
    assert cli_main(argv(kit, out, "--resume", "latest")) == 2
    assert "no intact checkpoint" in one_error_line(capsys.readouterr().err)
    assert cli_main(argv(kit, out, "--resume", str(tmp_path / "nowhere"))) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)
    assert not (out / LOCK_NAME).exists()


# -- planted pickles ----------------------------------------------------------------------------------------

def plant(folder: Path, marker: Path, names) -> None:
    for name in names:
        if name.endswith(".pt"):
            torch.save(Payload(marker), folder / name)
        else:
            (folder / name).write_bytes(pickle.dumps(Payload(marker)))


def test_planted_pickles_never_run(kit, reference, tmp_path, capsys, caplog, monkeypatch):
    marker = tmp_path / "pwned"
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickle.dumps(Payload(marker)))]
    assert ops[2:7:2] == [("SHORT_BINUNICODE", "io"), ("SHORT_BINUNICODE", "open"), ("STACK_GLOBAL", None)]
    assert ("REDUCE", None) in ops                      # the payload is live: unpickling it calls io.open(marker, "w")
    out = tmp_path / "run"
    root = copy_checkpoints(reference, out)
    newest, previous, oldest = root / LAST, root / "checkpoint-00000002", root / "checkpoint-00000001"
    plant(newest, marker, [p.name for p in newest.iterdir()] + ["trainer.pt", "rank0.pt"])    # (a) every file
    plant(previous, marker, ["trainer.pt", "rank0.pt", "optimizer.bin"])                       # (b) next to them
    shutil.rmtree(oldest)                                                                     # an older version's
    oldest.mkdir()
    plant(oldest, marker, ["trainer.pt", "rank0.pt"])
    forged = tmp_path / "forged"                          # a manifest that matches the planted files
    shutil.copytree(reference / "checkpoints" / LAST, forged)
    plant(forged, marker, ["trainer.json", "trainer.safetensors", "rank0.json", "rank0.safetensors"])
    (forged / "manifest.json").unlink()
    write_manifest(forged, 3)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("resume must not unpickle")
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)

    for folder, why in ((newest, "manifest.json is unreadable"), (oldest, "pickle-based"), (forged, "unreadable")):
        assert cli_main(argv(kit, out, "--resume", str(folder))) == 2
        assert why in one_error_line(capsys.readouterr().err)
    assert cli_main(argv(kit, out, "--resume", "latest")) == 0
    assert logged_steps(out) == [3]                      # from checkpoint 2, its extra files ignored
    assert any("optimizer.bin" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert_same_lora(root / LAST, reference / "checkpoints" / LAST)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tlcm_train", *argv(kit, out, "--resume", str(oldest))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and "pickle-based" in one_error_line(proc.stderr)
    assert not marker.exists()


# -- one run per folder ---------------------------------------------------------------------------------

def test_a_second_run_into_the_same_folder_is_refused_while_the_first_finishes(kit, tmp_path, monkeypatch):
    out, second = tmp_path / "run", {}
    step = Trainer.train_step

    def step_and_start_a_second_run(self):
        if not second:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
            second["proc"] = subprocess.run([sys.executable, "-m", "tlcm_train", *argv(kit, out)], cwd=REPO, env=env,
                                            capture_output=True, text=True, timeout=120)
        return step(self)
    monkeypatch.setattr(Trainer, "train_step", step_and_start_a_second_run)
    assert cli_main(argv(kit, out, "--set", "mlcd.steps=1")) == 0
    proc = second["proc"]
    assert proc.returncode == 2 and f"PID {os.getpid()} on {socket.gethostname()}" in one_error_line(proc.stderr)
    assert json.loads((out / "status.json").read_text())["state"] == "finished" and logged_steps(out) == [1, 2]
    verify_checkpoint(out / "checkpoints" / "checkpoint-00000002")
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_and_a_foreign_one_refused(kit, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": "elsewhere"}))
    assert cli_main(argv(kit, out)) == 2             # another host's pid cannot be checked: refused
    assert f"PID {gone.pid} on elsewhere" in one_error_line(capsys.readouterr().err)
    (out / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert cli_main(argv(kit, out, "--set", "mlcd.steps=1")) == 0
    assert any(f"PID {gone.pid}" in r.getMessage() and "taking over" in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_released_on_an_exception_and_on_sigterm(tmp_path):
    lock, handler = tmp_path / LOCK_NAME, signal.getsignal(signal.SIGTERM)
    with pytest.raises(ZeroDivisionError):
        with claim_output(tmp_path, fresh=True, overwrite=False):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
            1 / 0
    assert not lock.exists()
    with pytest.raises(SystemExit):
        with claim_output(tmp_path, fresh=True, overwrite=False):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)                            # the handler interrupts it
    assert not lock.exists() and signal.getsignal(signal.SIGTERM) is handler
    with claim_output(tmp_path, fresh=True, overwrite=False):
        with pytest.raises(RunFolderError, match=f"PID {os.getpid()}"):
            with claim_output(tmp_path, fresh=True, overwrite=False):
                pass
        assert lock.exists()                          # the refused claim left the owner's lock alone
    assert not lock.exists()


def test_a_fresh_start_over_an_earlier_run_is_refused_unless_overwrite(kit, reference, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "notes.txt").write_text("mine")
    (out / "logs" / "trainer-app.log").write_text("the app's log")
    (out / "checkpoints" / "checkpoint-00000099").mkdir()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert cli_main(argv(kit, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "earlier run" in line and "--resume latest" in line and "--overwrite" in line
    assert cli_main(argv(kit, out, "--overwrite", "--resume", "latest")) == 2
    one_error_line(capsys.readouterr().err)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before      # nothing touched

    assert cli_main(argv(kit, out, "--overwrite", "--set", "mlcd.steps=1")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "logs" / "trainer-app.log").read_text() == "the app's log"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-00000001", "checkpoint-00000002"]
    assert logged_steps(out) == [1, 2] and json.loads((out / "status.json").read_text())["step"] == 2
    assert any("--overwrite: removing" in r.getMessage() for r in caplog.records)
