"""The real SDXL UNet (2.6 B parameters, random weights, built offline) through one optimisation step of
every training stage and one TLCM generation, on the CPU: peak memory and time per stage, and the
arithmetic from these measurements to SDXL at 1024² on one 24 GB GPU.

What it does:

1. Builds, seeded and offline, a diffusers SDXL folder with SDXL base's own UNet and VAE configs (every
   layer, every width) and one-layer text encoders of SDXL's widths (768 / 1280, used only to encode the
   prompts before training), saved in fp16 (about 5.3 GB on disk; reused when its manifest matches).
2. For each stage (MLCD; LCD; LCD + MPS; DMD + GAN + MPS) runs a fresh process that builds the real
   ``Trainer`` (the code path of ``python -m tlcm_train``) from the shared ``bench/memory_stages.py`` run
   settings at batch 1, LoRA rank 64 (the paper's), gradient checkpointing on, a small latent
   (``--resolution``, 128 px: 16² latents), the short solver loops of that bench (2 segments, 1 teacher and
   student step in LCD) and its small random MPS-architecture scorer; then one warm-up ``train_step()``
   (it allocates the AdamW states, so they are not counted as activations) and one measured, and the
   preference term's decode and scorer measured alone. Figures: CPU RSS (fp32 weights), the peak per
   phase of the measured step, wall time.
3. Loads the SDXL folder with a random rank-64 LoRA on every TLCM target in the official release's PEFT
   layout (alpha 8) through the core's loader and samples one image with ``TLCMScheduler`` (4 steps) at
   that size: time and peak RSS.
4. Estimates SDXL at 1024², batch 1, on a GPU with the trainer's defaults (bf16 UNet and decode, fp16
   scorer, AdamW), by ``memory_stages.sdxl_budget``: the exact resident bytes of the real parameters plus
   each phase's measured activations here scaled by the ratio of autograd-saved bytes of the real UNet at
   128² vs 16² latents (counted on the meta device), and the decode and scorer by their own ratios.

    python bench/sdxl_full_smoke.py --work outputs/bench/sdxl_full --out bench/results/sdxl_full_smoke

On a machine with a GPU the trainer and the generation run there and the same command records the CUDA
allocator's peaks instead of RSS; with ``--resolution 1024`` it then measures SDXL's own size rather than
estimating it.

Slow (8 minutes on 2 CPU cores once the 5.3 GB model folder exists; building it adds its own time) and
about 17 GB of RAM at its peak (the model load): a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import memory_stages as ms  # noqa: E402  (the shared run settings, probes and arithmetic)

from tlcm.files import atomic_write_text  # noqa: E402

RESULTS = ROOT / "outputs" / "bench" / "sdxl_full_smoke"
STAGES = ("mlcd", "lcd", "mps", "dm")
RANK = 64
TEXT_WIDTHS = (768, 1280)              # SDXL's CLIP-L / bigG hidden sizes (cross-attention 2048, pooled 1280)
SEED = 0


def build_full_model(folder: Path) -> Path:
    """The full-size SDXL-architecture folder (fp16 safetensors), reused when its manifest matches."""
    return ms.build_sdxl_folder(folder, ms.sdxl_unet_config(), ms.sdxl_vae_config(), TEXT_WIDTHS, text_layers=1,
                                half=True, seed=SEED)


def official_layout_lora(unet: torch.nn.Module, folder: Path) -> Path:
    """A random rank-64 LoRA on every TLCM target in the official release's PEFT layout (alpha 8)."""
    from tlcm.lora import LoraFile, LoraModule, save_lora, tlcm_target_modules
    g = torch.Generator().manual_seed(SEED + 1)
    modules = {}
    for name in tlcm_target_modules(unet):
        weight = unet.get_submodule(name).weight
        tail = tuple(weight.shape[2:])
        modules[name] = LoraModule(0.01 * torch.randn(RANK, weight.shape[1], *tail, generator=g),
                                   0.01 * torch.randn(weight.shape[0], RANK, *(1,) * len(tail), generator=g), 8.0)
    return save_lora(LoraFile(modules, "peft"), folder, "peft")


def generate_once(model: str, work: str, resolution: int, threads: int) -> dict[str, Any]:
    """One TLCM image with an official-layout LoRA through the core's loader and scheduler: load time,
    sampling time, peak RSS."""
    from tlcm.generate import GenerationSettings, apply_loras, generate
    from tlcm.models import load_sdxl_pipeline
    torch.set_num_threads(threads)
    mem = ms.memory_probe()
    started = time.perf_counter()
    pipe = load_sdxl_pipeline(model, device="cuda" if isinstance(mem, ms.CudaMem) else "cpu", dtype=torch.float32)
    lora = official_layout_lora(pipe.unet, Path(work) / "official_layout_lora")
    reports = apply_loras(pipe, [(str(lora), 1.0)])
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()
    rss_after_load, load_peak = mem.rss_and_hwm()
    mem.reset()
    image = generate(pipe, GenerationSettings(prompt=ms.PROMPTS[0], steps=4, width=resolution, height=resolution))[0]
    done = time.perf_counter()
    return {"load_s": loaded - started, "sample_s": done - loaded, "rss_after_load": rss_after_load,
            "load_peak": load_peak, "sample_peak": max(mem.rss_and_hwm()), "image_size": list(image.size),
            "lora_targets": f"{len(reports[0].matched)} of {reports[0].model_targets} TLCM targets matched, "
                            f"{len(reports[0].unmatched)} LoRA modules unmatched", "steps": 4}


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    if spec["key"] == "generate":
        result = generate_once(spec["model"], spec["work"], spec["resolution"], spec["threads"])
    else:
        result = ms.measure(spec["overrides"], scorer_weights=spec["scorer_weights"],
                            scorer_tokenizer=spec["scorer_tokenizer"], warmup=1, steps=1, threads=spec["threads"])
    print("RESULT " + json.dumps(result), flush=True)


def gib(x: float) -> str:
    return f"{x / 2 ** 30:.2f}"


def markdown(rec: dict[str, Any]) -> str:
    res, gen = rec["resolution"], rec["generate"]
    cuda = ms.memory_kind(rec["rows"]["mlcd"]) == "cuda"
    where, label = ("GPU", "CUDA allocated") if cuda else ("CPU smoke", "RSS")
    measured = ("Memory figures are the CUDA allocator's bytes (`torch.cuda.max_memory_allocated`), fp32 weights; no "
                "runtime is in them" if cuda else
                "RSS figures are CPU bytes, fp32; the runtime (imports, "
                f"{gib(rec['rows']['mlcd']['rss_imports'])} GiB) is included in \"after load\", \"after warm-up\" and "
                "\"peak\"")
    lines = [f"# Full-size SDXL UNet through every training stage ({where})\n", f"`{rec['command']}`\n",
             f"{rec['machine']}; torch {rec['torch']}; {rec['threads']} threads; total {rec['runtime_s'] / 60:.0f} "
             f"min. Model: SDXL base's UNet config ({rec['measured_unet_params'] / 1e9:.3f} B parameters; real "
             f"SDXL: {rec['sdxl']['unet_base'] / 1e9:.3f} B) and VAE config, random weights (seed {SEED}), fp32 in "
             f"memory; text encoders one layer at SDXL's widths. Batch 1, {res}² px ({res // 8}² latents), LoRA "
             f"rank {RANK}, gradient checkpointing, the short solver loops of bench/memory_stages.py "
             f"({', '.join(ms.FAST_LOOPS)}), its small random MPS-architecture scorer. Per stage, in a fresh process (the `Trainer` of "
             f"`python -m tlcm_train`), one warm-up `train_step()` (it allocates the AdamW states) and one "
             f"measured. {measured}; \"over warm-up\" is the measured step's activations and temporaries.\n",
             "| stage | after load GiB | after warm-up GiB | step peak GiB | step over warm-up GiB | load s | step s | "
             "peak phase |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        m = rec["rows"][stage]
        peak_phase = max(m["phases"], key=lambda p: m["phases"][p]["peak"])
        lines.append(f"| {ms.STAGE_STEPS[stage]} | {gib(m['rss_after_load'])} | {gib(m['rss_after_warmup'])} | "
                     f"{gib(m['train_peak'])} | {gib(m['train_peak'] - m['rss_after_warmup'])} | {m['load_s']:.0f} | "
                     f"{m['step_s'][-1]:.0f} | `{peak_phase}` |")
    lines += ["", f"TLCM generation (a random official-layout LoRA through `tlcm.generate`, TLCMScheduler 4 steps, "
              f"{res}² px): load {gen['load_s']:.0f} s, sampling {gen['sample_s']:.1f} s, {label} after load "
              f"{gib(gen['rss_after_load'])} GiB, sampling peak {gib(gen['sample_peak'])} GiB; {gen['lora_targets']}.",
              "", "## SDXL at 1024², batch 1, one GPU (estimate)\n",
              "The trainer's GPU defaults (bf16 UNet and decode, fp16 scorer, AdamW): resident = the exact bytes of "
              "the real parameters (counted on the meta device); transient = each phase's activations measured "
              f"above × the ratio of autograd-saved bytes, real UNet at 128² vs {res // 8}² latents "
              f"({rec['factors']['unet']:.1f}x), × 0.5 for bf16; the preference term's decode × "
              f"{rec['factors']['vae_unit_bf16']:.1f} (unit-checkpointed, bf16) or scorer × "
              f"{rec['factors']['scorer']:.1f}, whichever is larger (`memory_stages.sdxl_budget`).\n",
              "| stage | resident GiB | transient GiB (peak phase) | total GiB | fits 24 GB |", "|---|---|---|---|---|"]
    for stage in STAGES:
        e = rec["estimate"][stage]
        lines.append(f"| {ms.STAGE_STEPS[stage]} | {gib(e['resident_total'])} | {gib(e['transient'])} "
                     f"(`{e['peak_phase']}`) | {gib(e['total'])} | {'yes' if e['total'] < 24e9 * 0.95 else 'NO'} |")
    lines += ["", "Resident parts (bytes per parameter): " + "; ".join(
        f"{k} {gib(v)} GiB" for k, v in rec["estimate"]["dm"]["resident"].items()) + ".", "",
        "Caveats: " + ("the allocator's peak leaves out the CUDA context and its cached free blocks; " if cuda else
                       "CPU RSS is not the CUDA allocator (no fragmentation or cuDNN workspaces counted); ") + "the "
        "activation ratio assumes activations scale like the saved bytes the meta-device count sees; the "
        "solver loops are shortened (more teacher steps add time, not peak: each solver step's graph is "
        "freed); the MPS scorer here is small, its real size enters only through the resident bytes and "
        "the scorer ratio; a peak in the `optimizer` phase (AdamW's temporaries, sized by the LoRA, not the "
        "image) is scaled like activations, which overstates it. bench/results/memory_stages.md derives the "
        "same budget from a mid-size UNet."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench" / "sdxl_full",
                        help="the built model (about 5.3 GB) and run folders")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results path without suffix; the committed ones are bench/results/sdxl_full_smoke")
    parser.add_argument("--resolution", type=int, default=128, help="training and sampling size in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.render:
        rec = json.loads(args.out.with_suffix(".json").read_text())
        atomic_write_text(args.out.with_suffix(".md"), markdown(rec))
        return None
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    print("building the full-size SDXL folder ...", flush=True)
    model = build_full_model(args.work / "model")
    scorer = str(ms.build_mid_scorer(args.work / "mid_mps_scorer.safetensors"))
    prompts = args.work / "prompts.txt"
    prompts.write_text("\n".join(ms.PROMPTS) + "\n")
    rows = {}
    for stage in STAGES:
        print(f"stage {stage} ...", flush=True)
        out = args.work / f"run_{stage}"
        shutil.rmtree(out, ignore_errors=True)
        overrides = [*ms.run_overrides(model, prompts, out, stage, 1, RANK, scorer), f"lora.alpha={RANK}",
                     f"train.resolution={args.resolution}"]
        overrides = [o.replace(".steps=3", ".steps=2") for o in overrides]       # one warm-up + one measured step
        spec = {"key": stage, "overrides": overrides, "scorer_weights": scorer,
                "scorer_tokenizer": str(model / "tokenizer"), "threads": args.threads}
        rows[stage] = ms.run_child(spec, script=__file__, threads=args.threads)
        print(f"  after load {gib(rows[stage]['rss_after_load'])} GiB, step peak {gib(rows[stage]['train_peak'])} "
              f"GiB, step {rows[stage]['step_s'][-1]:.0f} s", flush=True)
    print("generation ...", flush=True)
    gen = ms.run_child({"key": "generate", "model": str(model), "work": str(args.work), "resolution": args.resolution,
                        "threads": args.threads}, script=__file__, threads=args.threads)
    print("arithmetic (meta device) ...", flush=True)
    real = ms.sdxl_parameter_counts()
    latent, sdxl_latent = args.resolution // 8, ms.SDXL_RESOLUTION // 8
    u_real, u_here = ms.unet_proxy(ms.sdxl_unet_config(), sdxl_latent, RANK), ms.unet_proxy(ms.sdxl_unet_config(),
                                                                                          latent, RANK)
    vae = ms.sdxl_vae_config()
    factors = {"unet": u_real["checkpointed"] / u_here["checkpointed"],
               "vae_unit_bf16": ms.vae_decode_proxy(vae, sdxl_latent, unit_checkpointing=True)
               / ms.vae_decode_proxy(vae, latent, unit_checkpointing=True) / 2}
    from tlcm_train.preference.mps import MPSModel, clip_vit_h14_config
    factors["scorer"] = (ms.scorer_proxy(lambda: MPSModel(clip_vit_h14_config()), 4)
                         / ms.scorer_proxy(ms._mid_scorer_model, 4))
    estimate = ms.sdxl_budget({s: dict(m, stage=s) for s, m in rows.items()}, real, factors, 0.5, 8, 2, 2,
                              "vae_unit_bf16")
    rec = {"command": " ".join(["python bench/sdxl_full_smoke.py", *(argv if argv is not None else sys.argv[1:])]),
           "runtime_s": time.perf_counter() - started, "machine": f"{ms._cpu_model()}, {os.cpu_count()} cores",
           "platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
           "resolution": args.resolution, "measured_unet_params": rows["mlcd"]["params"]["unet_base"], "sdxl": real,
           "rows": rows, "generate": gen, "factors": factors, "proxies": {"unet_real": u_real, "unet_here": u_here},
           "estimate": estimate}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(rec, indent=1, default=str) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
