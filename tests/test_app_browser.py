"""End to end in real headless Chromium. The Setup tab alone: a bad value is refused next to its field (and
named by its label in the message), also inside the closed Advanced section; path fields are checked when
they lose focus; the command box follows a preset change and every field. Then a run: stage 4 without
scorer weights refused before launch, train the CPU toy preset from the Setup tab's Train button (the toy
teacher; 44 steps at batch 2 on 64 toy prompts, set in the form; 48 with the toy scorer), reload the page
mid-run and see it reattach, stop (saves), resume and see the status keep the resumed step, run to the
end, see the labelled sample grids, the curves, one log line per step and the finished state, check the
LoRA files on disk, generate with the LoRA beside the teacher baseline and export it (Try it), save
screenshots (``TLCM_DOCS_IMAGES=docs/images`` refreshes the README's). Debian's chromium is driven by
Playwright's Python API (no downloaded browser). About 2 min on 2 idle CPU cores; nearer 4 when they are
shared."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, load_file

from tlcm_toy.data import write_prompts

pytest.importorskip("gradio", reason="the trainer app needs gradio (pip install gradio)")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
TOY_SCORER = ROOT / "tlcm_toy" / "weights" / "scorer.safetensors"     # stages 3-4 of the toy preset


def _ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is absent and there is no apt-get to install it (Debian: apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"could not install Debian's chromium ({' '.join(cmd)}: {done.stderr.strip()[-300:]})")


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "playwright==1.65.2"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"could not pip install playwright: {done.stderr.strip()[-300:]}")
        from playwright.sync_api import sync_playwright
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``tlcm-trainer`` on 127.0.0.1 at a free port, stopped at teardown as a service manager stops it
    (SIGTERM): it must exit cleanly and take its temporary files (Export's folder) with it."""
    home = tmp_path_factory.getbasetemp() / "trainer-home"
    port = _free_port()
    log = (tmp_path_factory.mktemp("app") / "app.log").open("wb")
    scratch = tmp_path_factory.mktemp("app-tmp")
    env = {**os.environ, "TLCM_TRAINER_HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "tlcm_toy.trainer_app", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp_path_factory.mktemp("cwd"))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300          # generous: imports crawl on busy shared cores
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the app did not start:\n" + Path(log.name).read_text()[-3000:])
            time.sleep(0.5)
    assert list(scratch.glob("tlcm-export-*")), "the app's Export folder should live in its TMPDIR"
    yield url
    proc.terminate()
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    finally:
        log.close()
    assert code == 0, Path(log.name).read_text()[-3000:]
    assert not list(scratch.glob("tlcm-export-*"))


@pytest.fixture()
def page(tmp_path):
    _ensure_chromium()
    with _playwright()() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1600})
        yield context.new_page()
        context.close()


def _state(page) -> tuple[str, int]:
    box = page.locator("#run-state")
    return box.get_attribute("data-state") or "", int(page.locator("#run-step").inner_text() or 0)


def _wait(page, done, timeout: float, what: str) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    seen = ("", 0)
    while time.monotonic() < deadline:
        if page.locator("#run-step").count():
            seen = _state(page)
            if done(*seen):
                return seen
        page.wait_for_timeout(300)
    raise AssertionError(f"waiting for {what}: last state {seen}; log:\n{page.locator('#log').inner_text()}")


def _message(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#message').innerText.includes({text!r})", timeout=60_000)


def _check(page, elem_id: str, on: bool) -> None:
    box = page.locator(f"#{elem_id} input[type=checkbox]")
    box.set_checked(on)
    page.wait_for_timeout(200)


def _set(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    field.fill(value)
    field.press("Tab")


def _command(page, text: str) -> str:
    """The command box once it contains ``text``."""
    page.wait_for_function(f"document.querySelector('#command').innerText.includes({text!r})", timeout=60_000)
    return page.locator("#command").inner_text()


def _note(page, elem_id: str, text: str) -> None:
    """Wait until the field ``elem_id`` shows ``text`` under its label."""
    page.wait_for_function(f"document.querySelector('#{elem_id}').innerText.includes({text!r})", timeout=60_000)


def _flagged(page, elem_id: str) -> bool:
    return "tlcm-invalid" in (page.locator(f"#{elem_id}").get_attribute("class") or "").split()


def _preset(page, name: str) -> None:
    page.locator("#preset input").click()
    page.locator(f"li[aria-label='{name}']").click()
    _message(page, f"Preset {name} applied")


def _docs_png(source: Path, target: Path, clip_height: int) -> Path:
    """A README screenshot: the top ``clip_height`` pixels, 1000 px wide, in 128 colours (PNG, under 100 KB)."""
    with Image.open(source) as shot:
        top = shot.convert("RGB").crop((0, 0, shot.width, min(clip_height, shot.height)))
    top = top.resize((1000, round(top.height * 1000 / top.width)), Image.Resampling.LANCZOS)
    top.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    return target


def _product(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return up.float().flatten(1) @ down.float().flatten(1)


def _peft_deltas(config: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT adapter's (lora_alpha/r)·B·A per module, keyed by kohya's flattened module name."""
    out = {}
    for key in (k for k in state if k.endswith(".lora_A.weight")):
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        alpha = config["alpha_pattern"].get(name, config["lora_alpha"])
        rank = config["rank_pattern"].get(name, config["r"])
        out[name.replace(".", "_")] = alpha / rank * _product(state[key.replace("lora_A", "lora_B")], state[key])
    return out


def _lora_deltas(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Per format, module (kohya's flattened name) -> its weight update, written out from the raw files:
    kohya (alpha/r)·up·down, diffusers up·down (the scale is folded into up), PEFT (lora_alpha/r)·B·A."""
    kohya = load_file(str(folder / "tlcm_lora_kohya.safetensors"))
    out = {"kohya": {}, "diffusers": {}}
    for key in (k for k in kohya if k.endswith(".lora_down.weight")):
        base = key.removesuffix(".lora_down.weight")
        rank = kohya[key].shape[0]
        out["kohya"][base.removeprefix("lora_unet_")] = float(kohya[base + ".alpha"]) / rank * _product(
            kohya[base + ".lora_up.weight"], kohya[key])
    diffusers = load_file(str(folder / "tlcm_lora_diffusers.safetensors"))
    for key in (k for k in diffusers if k.endswith(".lora.down.weight")):
        name = key.removeprefix("unet.").removesuffix(".lora.down.weight")
        out["diffusers"][name.replace(".", "_")] = _product(diffusers[f"unet.{name}.lora.up.weight"], diffusers[key])
    out["peft"] = _peft_deltas(json.loads((folder / "tlcm_lora_peft" / "adapter_config.json").read_text()),
                               load_file(str(folder / "tlcm_lora_peft" / "adapter_model.safetensors")))
    return out


def _assert_same_deltas(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(expected) and expected, what
    for name, delta in expected.items():    # fp16 files: the folded diffusers scale rounds differently
        torch.testing.assert_close(got[name], delta, rtol=1e-2, atol=1e-3 * float(delta.abs().max()),
                                   msg=f"{what}: {name}")


def _fetched_image(app_url: str, src: str) -> np.ndarray:
    """The image the browser shows, downloaded from the app like the browser does."""
    with urllib.request.urlopen(urllib.parse.urljoin(app_url, src), timeout=30) as resp:
        with Image.open(io.BytesIO(resp.read())) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float64)


def _core_image(model: str, loras: list, settings: dict) -> np.ndarray:
    """What ``tlcm generate`` makes of the Try it fields (the core, outside the app), through the lossy WebP
    (PIL's defaults) that Gradio's gallery serves."""
    from tlcm.generate import GenerationSettings, apply_loras, generate
    from tlcm.models import load_sdxl_pipeline
    pipe = load_sdxl_pipeline(model, device="cpu")
    apply_loras(pipe, loras)
    [image] = generate(pipe, GenerationSettings(**settings))
    buffer = io.BytesIO()
    image.save(buffer, "webp")
    with Image.open(buffer) as served:
        return np.asarray(served.convert("RGB"), dtype=np.float64)


def _teacher_image(model: str, prompt: str, seed: int, size: int, steps: int, guidance: float) -> np.ndarray:
    """The teacher baseline written out with diffusers (outside the app): the base model, trailing DDIM,
    CFG, from the noise the core's generator gives ``seed``; through the gallery's WebP."""
    from diffusers import DDIMScheduler
    from tlcm.models import load_sdxl_pipeline
    pipe = load_sdxl_pipeline(model, device="cpu")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    side = size // pipe.vae_scale_factor
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, pipe.unet.config.in_channels, side, side), generator=generator)
    [image] = pipe(prompt=prompt, latents=noise, num_inference_steps=steps, guidance_scale=guidance, height=size,
                   width=size).images
    buffer = io.BytesIO()
    image.save(buffer, "webp")
    with Image.open(buffer) as served:
        return np.asarray(served.convert("RGB"), dtype=np.float64)


def test_setup_points_at_bad_fields_and_the_command_follows_the_form(app_url, page, tmp_path):
    page.goto(app_url)
    page.get_by_role("tab", name="Setup").click()
    assert "train.resolution=32" in _command(page, "accelerate launch")          # the toy preset, from the start
    assert "--host 0.0.0.0 --password" in page.locator("#footer").inner_text()
    assert "CPU toy" in page.locator("#advanced").inner_text()

    _set(page, "f-train-batch_size", "2.5")                 # never rounded to 2: refused, naming the field
    assert "batch size: expected a whole number, got 2.5" in _command(page, "Train would refuse")
    page.locator("#setup-train").click()
    _message(page, "Error in batch size")
    assert "expected a whole number, got 2.5" in page.locator("#message").inner_text()
    _note(page, "f-train-batch_size", "⚠ expected a whole number, got 2.5")
    assert _flagged(page, "f-train-batch_size") and page.locator("#f-train-batch_size").is_visible()   # Setup stays
    _set(page, "f-train-batch_size", "2")
    assert "train.batch_size=2" in _command(page, "accelerate launch")

    page.locator("#advanced").get_by_text("Advanced:").first.click()           # a field inside Advanced
    _set(page, "f-mlcd-lr", "0")
    page.locator("#advanced").get_by_text("Advanced:").first.click()           # ... closed again
    page.wait_for_timeout(500)
    assert not page.locator("#f-mlcd-lr").is_visible()
    page.locator("#check-paths").click()
    _message(page, "Error in Advanced › mlcd › lr")
    _note(page, "f-mlcd-lr", "⚠ must be > 0")
    assert _flagged(page, "f-mlcd-lr") and page.locator("#f-mlcd-lr").is_visible()   # opened to show it
    assert not _flagged(page, "f-train-batch_size")          # the earlier error is gone with its value
    _set(page, "f-mlcd-lr", "0.0005")

    model = page.locator("#f-model-path textarea").input_value()
    _set(page, "f-model-path", str(tmp_path / "no-model"))                      # checked when it loses focus
    _note(page, "f-model-path", "does not exist")
    assert _flagged(page, "f-model-path")
    _set(page, "f-model-path", model)
    _note(page, "f-model-path", "✓ diffusers model folder found")
    assert not _flagged(page, "f-model-path")
    _set(page, "f-output-dir", str(tmp_path / "new-run"))
    _note(page, "f-output-dir", "✓ a new folder")

    _preset(page, "24 GB GPU")                   # the command follows the preset: stages 3-4 want MPS weights
    assert "Scorer weights (stages 3-4): required" in _command(page, "Train would refuse")
    assert "24 GB GPU" in page.locator("#advanced").inner_text()
    _check(page, "f-mps-enabled", False)
    _check(page, "f-dm-enabled", False)
    command = _command(page, "--mixed_precision bf16")
    assert "train.resolution" not in command and "mps.steps=0" in command and "dm.steps=0" in command
    _preset(page, "CPU toy")
    assert "train.resolution=32" in _command(page, "train.resolution=32")


def test_train_reload_stop_resume_finish_in_chromium(app_url, page, tmp_path):
    out = tmp_path / "run"
    page.goto(app_url)
    page.get_by_role("tab", name="Setup").click()
    model = page.locator("#f-model-path textarea").input_value()
    assert model.endswith("toy/weights/teacher")                # the CPU toy preset is the default
    assert "toy.yaml" in page.locator("#preset-summary").inner_text()
    _set(page, "f-model-path", str(tmp_path / "no-model"))       # bad input: a message, nothing else changes
    page.locator("#check-paths").click()
    _message(page, "does not exist")
    _set(page, "f-model-path", model)
    page.locator("#check-paths").click()
    _message(page, "Paths OK")
    _set(page, "f-output-dir", str(out))
    _set(page, "f-data-prompts", str(write_prompts(tmp_path / "prompts.txt", 64, 0)))   # 64 of the 4000: quick to encode
    scorer = TOY_SCORER.is_file()
    stage4 = page.locator("#f-dm-enabled input[type=checkbox]")
    assert stage4.is_checked() == scorer
    assert page.locator("#f-dm-steps input").input_value() == ("20" if scorer else "1000")   # else the paper's
    if not scorer:        # stage 4 on with the preference term and no scorer weights: refused before launch
        _check(page, "f-dm-enabled", True)
        page.locator("#show-command").click()
        _message(page, "Error in Scorer weights (stages 3-4) (mps.scorer_weights)")
        assert _flagged(page, "f-mps-scorer_weights")
        _check(page, "f-dm-enabled", False)
    _set(page, "f-mlcd-steps", "40")                             # enough to reload and stop mid-run
    _set(page, "f-lcd-steps", "4")
    _set(page, "f-mps-steps", "2")
    _set(page, "f-dm-steps", "2")
    _set(page, "f-train-batch_size", "2")                        # toy.yaml's 32 would take minutes
    _set(page, "f-output-checkpoint_every", "10")
    _set(page, "f-output-sample_every", "10")
    total = 48 if scorer else 44
    page.locator("#show-command").click()
    page.wait_for_function("document.querySelector('#command').innerText.includes('accelerate launch')")
    command = page.locator("#command").inner_text()
    assert "mlcd.steps=40" in command and "train.batch_size=2" in command
    assert ("dm.steps=2" in command) == scorer and ("dm.steps=0" in command) != scorer
    page.screenshot(path=str(tmp_path / "tlcm-trainer-setup.png"), full_page=True)

    page.locator("#setup-train").click()                           # Train on Setup: starts, opens the Run tab
    _message(page, "Started in")
    page.locator("#stop").wait_for(state="visible", timeout=10_000)
    page.wait_for_function("document.querySelector('#samples-note').innerText"
                           ".includes('first samples at step 10')", timeout=20_000)
    _wait(page, lambda state, step: state == "running" and step >= 2, 240, "the run to start")
    assert "ETA" in page.locator("#run-state").inner_text()

    page.reload()                                   # the run survives the reload and the page reattaches
    page.get_by_role("tab", name="Run").click()
    _wait(page, lambda state, step: state == "running", 20, "reattach after reload")
    page.locator("#stop").click()
    _message(page, "stop requested")
    state, stopped_at = _wait(page, lambda state, step: state == "stopped", 60, "the stop")
    assert 2 <= stopped_at < total and (out / f"checkpoints/checkpoint-{stopped_at:08d}").is_dir()

    page.locator("#resume").click()
    _message(page, "Resumed in")
    seen = []                               # the step never falls back to 0 while the trainer loads
    _wait(page, lambda state, step: seen.append((state, step)) or state == "running", 240, "the resumed run")
    assert seen and all(step >= stopped_at for _, step in seen), seen
    assert f"resumed from step {stopped_at}" in page.locator("#run-resumed").inner_text()
    _wait(page, lambda state, step: state == "finished" and step == total, 240, "the resumed run to finish")
    page.wait_for_function("document.querySelectorAll('#samples img').length >= 2")
    assert f"{total}/{total}" in page.locator("#run-state").inner_text()
    from tlcm_train.config import load_config
    columns = " / ".join(str(n) for n in load_config(out / "config.yaml").output.sample_steps)   # the run's
    captions = page.locator("#samples .caption-label").all_inner_texts()          # newest first, each labelled
    grids = sorted((int(p.stem.split("-")[1]) for p in (out / "samples").glob("step-*.png")), reverse=True)
    assert captions == [f"step {n} · columns: {columns} sampling steps" for n in grids] and grids[0] == total
    assert "newest first" in page.locator("#samples-note").inner_text()
    log = page.locator("#log").inner_text().splitlines()
    counts = [line.split("|")[2].split()[0] for line in log if line.startswith("tlcm-train:") and "%|" in line]
    assert counts and len(counts) == len(set(counts)), log                          # one line per step
    series = set(page.locator("#loss-plot").get_attribute("data-series").split())     # every stage's curves
    assert series == ({"mlcd", "lcd", "mps", "preference", "dm", "dmd", "gan"} if scorer else {"mlcd", "lcd"})
    assert "tlcm_lora_kohya.safetensors" in page.locator("#lora-files").inner_text()
    deltas = _lora_deltas(out / "lora")                        # the three formats hold one trained update
    for fmt in ("diffusers", "peft"):
        _assert_same_deltas(deltas[fmt], deltas["kohya"], fmt)
    assert sum(float(d.abs().sum()) > 0 for d in deltas["kohya"].values()) > 0.9 * len(deltas["kohya"])  # B != 0

    page.get_by_role("tab", name="Run").click()
    run_shot = tmp_path / "tlcm-trainer-run.png"
    page.screenshot(path=str(run_shot), full_page=True)

    page.get_by_role("tab", name="Try it").click()            # the trained LoRA is filled in; generate, then export
    kohya = out / "lora" / "tlcm_lora_kohya.safetensors"
    assert page.locator("#try-lora textarea").input_value() == str(kohya)
    _check(page, "try-teacher", True)                         # the teacher baseline beside the LoRA
    page.locator("#generate").click()
    page.wait_for_function("document.querySelectorAll('#generated img').length >= 2", timeout=120_000)
    captions = page.locator("#generated .caption-label").all_inner_texts()
    assert captions[0].startswith("TLCM LoRA · ")
    assert captions[1] == "teacher baseline (no LoRA) · DDIM 25 steps · CFG 3"
    shown, baseline = (_fetched_image(app_url, img.get_attribute("src"))
                       for img in page.locator("#generated img").all()[:2])
    settings = dict(prompt=page.locator("#try-prompt textarea").input_value(), seed=0, width=32, height=32,
                    steps=int(page.locator("#try-steps input[type=number]").input_value()))
    with_lora, plain = (_core_image(model, loras, settings) for loras in ([(str(kohya), 1.0)], []))
    assert shown.shape == with_lora.shape == baseline.shape == (32, 32, 3)
    off = {name: float(np.abs(shown - image).max()) for name, image in (("lora", with_lora), ("plain", plain))}
    assert off["lora"] <= 2.0 and off["plain"] > 10.0, off       # measured 0 and 56 (mean 3.0) grey levels
    teacher = _teacher_image(model, settings["prompt"], seed=0, size=32, steps=25, guidance=3.0)
    assert float(np.abs(baseline - teacher).max()) <= 2.0        # the base model, DDIM 25 + CFG 3, same noise
    assert float(np.abs(baseline - shown).mean()) > 1.0
    page.get_by_role("radio", name="peft").check()
    page.locator("#export").click()
    _message(page, "Exported as peft")
    link = page.locator("#exported a").first
    assert "tlcm_lora_peft.zip" in page.locator("#exported").inner_text().replace("\n", "")
    with urllib.request.urlopen(urllib.parse.urljoin(app_url, link.get_attribute("href")), timeout=30) as resp:
        archive = zipfile.ZipFile(io.BytesIO(resp.read()))
    exported = _peft_deltas(json.loads(archive.read("adapter_config.json")),
                            load(archive.read("adapter_model.safetensors")))
    _assert_same_deltas(exported, deltas["kohya"], "the exported zip")
    page.screenshot(path=str(tmp_path / "tlcm-trainer-try-it.png"), full_page=True)
    page.get_by_role("tab", name="Run").click()

    shot = tmp_path / "tlcm-trainer.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.width == 1280 and np.asarray(image.convert("L"), dtype=np.float64).std() > 5   # not blank
    docs = {"trainer-setup.png": (tmp_path / "tlcm-trainer-setup.png", 1450),
            "trainer-run.png": (run_shot, 1500)}
    small = tmp_path / "docs"
    small.mkdir()
    for name, (source, height) in docs.items():
        made = _docs_png(source, small / name, height)
        assert made.stat().st_size < 150_000, (name, made.stat().st_size)
    if os.environ.get("TLCM_DOCS_IMAGES"):                     # refresh the README's screenshots
        for name in docs:
            shutil.copy(small / name, Path(os.environ["TLCM_DOCS_IMAGES"]) / name)
    if os.environ.get("TLCM_ARTIFACTS"):
        target = Path(os.environ["TLCM_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        for name in (shot.name, "tlcm-trainer-setup.png", "tlcm-trainer-try-it.png", run_shot.name):
            shutil.copy(tmp_path / name, target / name)
