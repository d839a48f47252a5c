"""bench/memory_stages.py's measuring function on the tiny kit: one stage, in process, seconds on a CPU."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tlcm.testing.build import build_tiny_sdxl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")]


def load_bench():
    spec = importlib.util.spec_from_file_location("memory_stages", ROOT / "bench" / "memory_stages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_stages"] = module      # the name its scorer plugin is resolved by
    spec.loader.exec_module(module)
    return module


def test_measure_one_stage_on_the_tiny_kit(tmp_path):
    bench = load_bench()
    paths = build_tiny_sdxl(tmp_path / "kit")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green car\n")
    result = bench.measure([f"model.path={paths.diffusers}", f"data.prompts=[{prompts}]",
                            f"output.dir={tmp_path / 'out'}",
                            "output.sample_every=0", "output.checkpoint_every=0", "lora.rank=4",
                            "lora.target_modules=[to_q, to_k, to_v, to_out.0]", "distill.num_segments=2",
                            "train.resolution=64", "train.batch_size=2", "mlcd.steps=3", "lcd.steps=0", "mps.steps=0",
                            "dm.steps=0", "mps.weight=0"], steps=1)
    assert result["stage"] == "mlcd" and result["batch"] == 2 and len(result["step_s"]) == 2
    assert result["phase_order"] == ["pair", "student_fwd", "backward", "optimizer", "rest"]   # the trainer's hook
    # in-process after other tests, a load can hand freed memory back: RSS may even fall below the import
    # reading (seen: 540 KB in a full CI run), so only the peaks are ordered
    assert result["rss_imports"] > 0 and result["rss_after_load"] <= result["load_peak"] <= result["process_peak"]
    assert result["train_peak"] >= result["rss_after_warmup"] > 0
    counts = result["params"]
    assert counts["unet_base"] > 0 and counts["student_lora"] > 0 and counts["vae"] > 0
    assert counts["fake_lora"] == counts["disc_heads"] == counts["scorer"] == 0      # stage 1 builds none of them
    assert "components" not in result


def test_stage_3_measures_its_scorer_term_and_update_through_the_trainer_hook(tmp_path):
    """The bench's mid-size MPS scorer reaches the trainer as a scorer plugin (no patched factory), and the
    trainer's phase hook reports the preference term and the technique's own update."""
    bench = load_bench()
    paths = build_tiny_sdxl(tmp_path / "kit")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green car\n")
    weights = bench.build_mid_scorer(tmp_path / "mid.safetensors")
    result = bench.measure([f"model.path={paths.diffusers}", f"data.prompts=[{prompts}]",
                            f"output.dir={tmp_path / 'out'}", "output.sample_every=0", "output.checkpoint_every=0",
                            "lora.rank=4", "lora.target_modules=[to_q, to_k, to_v, to_out.0]",
                            "distill.num_segments=2", "train.resolution=64", "train.batch_size=2", "mlcd.steps=0",
                            "lcd.steps=0", "mps.steps=3", "dm.steps=0", "mps.batch_size=0",
                            f"mps.scorer_weights={weights}"],
                           scorer_weights=str(weights), scorer_tokenizer=str(Path(paths.diffusers) / "tokenizer"),
                           steps=1, components=False)
    assert result["stage"] == "mps"
    assert result["phase_order"] == ["pair", "student_fwd", "term:preference", "backward", "optimizer",
                                     "update:mps", "rest"]
    assert result["params"]["scorer"] == bench.count(bench._mid_scorer_model())


def test_sdxl_variants_take_the_rows_measured_with_their_options():
    bench = load_bench()
    row = lambda stage, batch, variant="": {"stage": stage, "batch": batch, "variant": variant}  # noqa: E731
    mid = {"mlcd_b1": row("mlcd", 1), "mps_b1": row("mps", 1), "dm_b1": row("dm", 1),
           "dm_b1_crop": row("dm", 1, "crop")}
    assert bench.rows_for(mid, "") == {k: mid[k] for k in ("mlcd_b1", "mps_b1", "dm_b1")}
    # stage 1 has no decode and serves every variant; stage 3 was not measured with a crop, so it is left out
    assert bench.rows_for(mid, "crop") == {"mlcd_b1": mid["mlcd_b1"], "dm_b1": mid["dm_b1_crop"]}
    assert set(bench.SDXL_VARIANTS.values()) >= {("crop", 2, 2, 2, "vae_crop_bf16")}
    assert all(suffix in ("", *bench.VARIANTS) for suffix, *_ in bench.SDXL_VARIANTS.values())


def test_real_sdxl_parameter_counts_build_on_the_meta_device():
    """The SDXL arithmetic builds the real UNet, the trainer's Denoiser and techniques on ``meta``: any
    check that reads a tensor value there (``.item()``, ``float()``) breaks every memory estimate."""
    counts = load_bench().sdxl_parameter_counts()
    assert counts["unet_base"] == 2_567_463_684                  # SDXL base 1.0's UNet
    assert counts["student_lora"] > 0 and counts["fake_lora"] == counts["student_lora"]


def load_smoke_bench():
    load_bench()                               # sdxl_full_smoke imports it as ``memory_stages``
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("sdxl_full_smoke", ROOT / "bench" / "sdxl_full_smoke.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


@pytest.mark.parametrize("name", ["memory_stages", "sdxl_full_smoke"])
def test_results_render_in_the_memory_kind_they_were_measured_in(name):
    """The committed .md is the committed .json rendered; a record measured on a GPU (CUDA allocator) says
    so and keeps none of the CPU RSS wording, so a GPU run of the same script cannot publish CPU captions."""
    bench = load_bench() if name == "memory_stages" else load_smoke_bench()
    record = json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())
    assert bench.markdown(record) == (ROOT / "bench" / "results" / f"{name}.md").read_text()
    rows = record["mid"] if name == "memory_stages" else record["rows"]
    for row in rows.values():
        row["memory"] = "cuda"
    record.update(gpu="NVIDIA H100 80GB HBM3", conclusion=[])
    text = bench.markdown(record)
    assert "CUDA allocated" in text and "RSS" not in text and "glibc" not in text
    if name == "memory_stages":
        assert "on NVIDIA H100 80GB HBM3" in text
