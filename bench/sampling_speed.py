"""Sampling speed side by side: TLCM 1/2/4/8 steps vs the teacher's DDIM-25 + CFG vs LCMScheduler-4.

Every sampler makes one image per repeat of the same prompt and seed through the same pipeline and the
evaluation harness's own code path (``tlcm.evaluation.samplers``: text encoding, sampling and VAE decode,
batch 1), with its UNet evaluations counted. Repeats are interleaved (each repeat runs every sampler, in an
order rotated by one each time), so a machine that slows down during the run slows every row alike; each
row reports min / median / max seconds per image and the median of its per-repeat ratio to DDIM-25 + CFG.

The model is the mid-size SDXL-architecture model of ``bench/memory_stages.py`` (SDXL's UNet and VAE
configs at a fifth of the widths, random weights): speed depends on the architecture, not the weights.
No LoRA is merged (merging changes no shape). On a CPU these are CPU figures: they order the samplers and
show the fixed cost (text encoders, decode, pipeline) that a few-step sampler no longer hides.

    python bench/sampling_speed.py --write     # replaces the committed bench/results/sampling_speed.{md,json}
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import memory_stages as ms  # noqa: E402  (the mid-size model)

from tlcm.evaluation.samplers import UnetCounter, parse_sampler, prepare_pipeline, sample_image  # noqa: E402
from tlcm.files import atomic_write_text  # noqa: E402

SPECS = ("tlcm:1", "tlcm:2", "tlcm:4", "tlcm:8", "lcm:4", "ddim:25:5")
BASELINE = "ddim:25:5"
PROMPT = "a lighthouse on a cliff at dawn"


def measure(folder: Path, resolution: int, repeats: int, threads: int) -> dict[str, dict]:
    from tlcm.models import load_sdxl_pipeline
    torch.set_num_threads(threads)
    pipe = load_sdxl_pipeline(folder, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    counter = UnetCounter(pipe.unet)
    samplers = [parse_sampler(spec) for spec in SPECS]
    rows = {s.spec: {"seconds": [], "unet_evals": None} for s in samplers}
    for sampler in samplers:                                        # warm-up: one image each, not counted
        prepare_pipeline(pipe, sampler)
        sample_image(pipe, sampler, PROMPT, 0, resolution, resolution)
        rows[sampler.spec]["unet_evals"] = counter.take()
    for repeat in range(repeats):
        order = samplers[repeat % len(samplers):] + samplers[:repeat % len(samplers)]
        for sampler in order:
            prepare_pipeline(pipe, sampler)
            start = time.perf_counter()
            sample_image(pipe, sampler, PROMPT, 0, resolution, resolution)
            rows[sampler.spec]["seconds"].append(time.perf_counter() - start)
            counter.take()
    counter.close()
    return rows


def summary(rows: dict[str, dict]) -> dict[str, dict]:
    base = rows[BASELINE]["seconds"]
    out = {}
    for spec, row in rows.items():
        seconds = row["seconds"]
        out[spec] = {"label": parse_sampler(spec).label, "unet_evals": row["unet_evals"], "min": min(seconds),
                     "median": statistics.median(seconds), "max": max(seconds),
                     "ratio_median": statistics.median(a / b for a, b in zip(seconds, base))}
    return out


def markdown(rec: dict) -> str:
    lines = ["# Sampling speed side by side\n", f"`{rec['command']}`\n",
             f"{rec['machine']}; torch {rec['torch']}; {rec['threads']} threads; mid-size SDXL-architecture model "
             f"(bench/memory_stages.py), {rec['resolution']}² px, batch 1, fp32; {rec['repeats']} interleaved "
             f"repeats after one warm-up image per sampler. Seconds per image include text encoding, sampling "
             f"and VAE decode (the evaluation harness's path).\n",
             "| sampler | UNet evaluations | s/image min | median | max | median ratio to DDIM-25 + CFG |",
             "|---|---|---|---|---|---|"]
    for spec, row in rec["summary"].items():
        lines.append(f"| {row['label']} (`{spec}`) | {row['unet_evals']} | {row['min']:.3f} | {row['median']:.3f} | "
                     f"{row['max']:.3f} | {row['ratio_median']:.3f} |")
    base = rec["summary"][BASELINE]
    four = rec["summary"]["tlcm:4"]
    lines += ["", f"TLCM-4 takes {four['ratio_median']:.3f}x the time of DDIM-25 + CFG per image for "
              f"{four['unet_evals'] / base['unet_evals']:.3f}x its UNet evaluations; the difference is the fixed "
              "cost per image (text encoders, VAE decode, pipeline set-up), which a 50-evaluation sampler hides."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the built model here (default: a temp folder)")
    parser.add_argument("--write", action="store_true",
                        help="replace the committed bench/results/sampling_speed.{md,json} (default: print only)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tlcm-speed-") as scratch:
        folder = ms.build_mid_model((args.work or Path(scratch)) / "model")
        rows = measure(folder, args.resolution, args.repeats, args.threads)
    rec = {"command": " ".join(["python bench/sampling_speed.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": f"{ms._cpu_model()}, {platform.machine()}", "torch": torch.__version__, "threads": args.threads,
           "resolution": args.resolution, "repeats": args.repeats, "rows": rows, "summary": summary(rows)}
    text = markdown(rec)
    print(text)
    if args.write:
        out = ROOT / "bench" / "results" / "sampling_speed"
        atomic_write_text(out.with_suffix(".json"), json.dumps(rec, indent=1) + "\n")
        atomic_write_text(out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
