"""Peak memory per training stage on a mid-size SDXL-config UNet (CPU RSS), and the arithmetic for real SDXL.

Target (issue 6 item 8): the full pipeline's peak (stage 4: DMD + GAN + preference) ≤ 1.6x the stage-1 peak,
i.e. no second UNet copy anywhere (docs/trainer.md §1-2), so that real SDXL at 1024², batch 1 fits one 24 GB
GPU with the memory options on.

What it does:

1. Builds, offline and seeded, a diffusers SDXL folder whose UNet is SDXL base's own config with the widths
   divided by 5 (320/640/1280 → 64/128/256, head size 64 kept, 1/2/2 transformer layers instead of 1/2/10)
   and a VAE of SDXL's config at 1/4 width; text encoders are narrow stand-ins (unloaded before training).
   The MPS-architecture scorer of stages 3-4 is a small random one (the toy scorer only scores 32 px toy
   images against toy-grammar prompts).
2. For each stage configuration runs a **fresh subprocess** that builds the ``Trainer``, does 1 warm-up and 2
   measured ``train_step()`` s and reports: the process RSS after imports, after model load, the peak RSS of
   the load, of the warm-up step and of the measured steps (Linux ``VmHWM``, reset with
   ``/proc/self/clear_refs`` so the load peak does not mask the training peak; the whole process's peak is
   the largest of those segments' peaks), the peak of every phase of a step, and the parameter counts.
   ``getrusage().ru_maxrss`` is kept in the JSON but not used: on Linux ``exec`` folds the forking parent's
   RSS high-water mark into it (``setmax_mm_hiwater_rss``), so a child of a big parent reports the parent's
   peak, and ``clear_refs`` resets it together with VmHWM.
3. Computes the budget of real SDXL from exact parameter counts (the real UNet, both LoRAs and the
   discriminator heads are built on the ``meta`` device) plus activation **estimates** scaled from the
   mid-size measurements by the ratio of autograd-saved bytes of real vs mid-size modules (also counted on
   ``meta``).

On a CPU the mid-size figures are RSS in fp32 with gradient checkpointing on, not CUDA allocator figures;
glibc's dynamic mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) in the children so freed tensors leave
RSS. On a machine with a GPU the trainer runs there and the same script records the CUDA allocator instead
(``torch.cuda.max_memory_allocated``, reset at every phase boundary): no runtime baseline to subtract.

Run: ``python bench/memory_stages.py --out bench/results/memory_stages`` (about 6 min on a 2-core CPU; the
committed .md and .json).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlcm_train.preference.scorer import ScorerPlugin  # noqa: E402  (after the path: run as a script)

RESULTS = ROOT / "outputs" / "bench" / "memory_stages"
SDXL_CONFIG = ROOT / "tlcm" / "configs" / "sdxl_base"
TOY_SCORER = ROOT / "tlcm_toy" / "weights" / "scorer.safetensors"
GiB = 2 ** 30
SEED = 0
RESOLUTION = 256                       # pixels: 32² latents
SDXL_RESOLUTION = 1024

# --- the mid-size model ----------------------------------------------------------------------------------
WIDTH_DIVISOR = 5                      # SDXL 320/640/1280 -> 64/128/256
MID_UNET = dict(block_out_channels=[64, 128, 256], transformer_layers_per_block=[1, 2, 2],
                attention_head_dim=[1, 2, 4],          # heads of 64 channels, as SDXL (5/10/20 heads)
                sample_size=RESOLUTION // 8)
MID_TEXT = (128, 256)                  # CLIP-L / bigG stand-in widths: cross-attention 384 (SDXL 2048), pooled 256
MID_VAE = dict(block_out_channels=[32, 64, 128, 128], sample_size=RESOLUTION)   # SDXL: 128/256/512/512
MID_SCORER = dict(text=dict(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu"),
                  vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2,
                              image_size=224, patch_size=14, hidden_act="gelu"),
                  projection_dim=128, cross=dict(dim=128, layers=4, heads=2, dim_head=64, ff_mult=4))
PROMPTS = ["a photo of a cat on a sofa", "a red car in the snow", "a bowl of ramen, studio light",
           "an old lighthouse at dusk", "a watercolor of a fox", "a city street in the rain",
           "a portrait of an astronaut", "a mountain lake at sunrise"]

# Cheap no-grad solver loops: they never hold memory across UNet calls, so fewer of them changes no peak,
# only the CPU time (M = 2 segments, q = p = 1 rollout/teacher steps, 1 GAN teacher step).
FAST_LOOPS = ["distill.num_segments=2", "lcd.student_steps=1", "lcd.teacher_steps=1", "dm.gan_teacher_steps=1"]
STAGE_STEPS = {"mlcd": "stage 1 (MLCD)", "lcd": "stage 2 (LCD)", "mps": "stage 3 (LCD + MPS)",
               "dm": "stage 4 (LCD + MPS + DMD + GAN)"}
# Measured configurations: stage, batch and a memory-option variant of the preference decode ("" = the trainer's
# defaults on this CPU: unit-checkpointed fp32 decode, fp32 scorer).
RUNS = [("mlcd", 1, ""), ("lcd", 1, ""), ("mps", 1, ""), ("dm", 1, ""), ("mlcd", 2, ""), ("lcd", 2, ""), ("mps", 2, ""),
        ("dm", 2, ""), ("dm", 1, "plain"), ("dm", 1, "bf16"), ("dm", 1, "crop")]
MID_CROP = 16                          # latent window side of the crop rows: a quarter of the 32² latents
SDXL_CROP = 64                         # the same quarter of SDXL's 128² latents
VARIANTS = {"plain": ["mps.decode_checkpoint=none"],
            "bf16": ["mps.decode_dtype=bf16", "mps.scorer_dtype=bf16"],
            "crop": [f"mps.decode_crop={MID_CROP}"]}
VARIANT_NOTES = {"": "defaults", "plain": "decode not checkpointed", "bf16": "bf16 decode + scorer",
                 "crop": f"decode crop {MID_CROP}"}
# Real-SDXL variants: (mid-size rows measured with these decode options, AdamW bytes/param, scorer bytes/param,
# decoding-VAE bytes/param, decode scaling factor); the dtype changes are applied in the arithmetic.
SDXL_VARIANTS = {
    "P: plain decode (mps.decode_checkpoint=none, decode_dtype=fp32, scorer_dtype=fp32), AdamW": ("plain", 8, 4, 4, "vae_plain"),
    "A: the trainer's defaults on a GPU (unit-checkpointed bf16 decode, fp16 scorer), AdamW": ("", 8, 2, 2, "vae_unit_bf16"),
    "B: A + train.optimizer=adamw8bit": ("", 2, 2, 2, "vae_unit_bf16"),
    f"C: B + mps.decode_crop={SDXL_CROP} (a quarter of the image scored)": ("crop", 2, 2, 2, "vae_crop_bf16"),
}
BATCHES = (1, 2)                       # full pipeline (stage 4) vs stage 1 at the same batch; 1 is the headline


def _sdxl_json(component: str) -> dict[str, Any]:
    data = json.loads((SDXL_CONFIG / component / "config.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def sdxl_unet_config() -> dict[str, Any]:
    return _sdxl_json("unet")


def mid_unet_config() -> dict[str, Any]:
    return dict(sdxl_unet_config(), **MID_UNET, cross_attention_dim=sum(MID_TEXT),
                projection_class_embeddings_input_dim=MID_TEXT[1] + 6 * 256)


def sdxl_vae_config() -> dict[str, Any]:
    return _sdxl_json("vae")


def mid_vae_config() -> dict[str, Any]:
    return dict(sdxl_vae_config(), **MID_VAE)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_sdxl_folder(folder: Path, unet: dict[str, Any], vae: dict[str, Any], text: tuple[int, int], *,
                      text_layers: int = 2, half: bool = False, seed: int = SEED) -> Path:
    """A seeded SDXL-architecture diffusers folder of these configs, text encoders of widths ``text`` (CLIP-L,
    bigG stand-ins; used only to encode prompts before training); reused when its manifest matches."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tlcm.testing.tiny import tiny_tokenizers
    manifest = {"seed": seed, "unet": unet, "vae": vae, "text": text, "text_layers": text_layers, "half": half}
    stamp = folder / "bench_manifest.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(manifest)):
        return folder
    shutil.rmtree(folder, ignore_errors=True)

    def text_config(width: int, act: str) -> dict[str, Any]:
        return dict(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=text_layers,
                    num_attention_heads=width // 64, max_position_embeddings=77, projection_dim=text[1],
                    hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)

    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory(prefix="tlcm-mem-") as scratch:
        torch.manual_seed(seed)
        modules = [UNet2DConditionModel(**unet), AutoencoderKL(**vae),
                   CLIPTextModel(CLIPTextConfig(**text_config(text[0], "quick_gelu"))),
                   CLIPTextModelWithProjection(CLIPTextConfig(**text_config(text[1], "gelu")))]
        unet_model, vae_model, te1, te2 = [(m.half() if half else m).eval() for m in modules]
        tok1, tok2 = tiny_tokenizers(scratch)
        scheduler = EulerDiscreteScheduler.from_config(json.loads((SDXL_CONFIG / "scheduler" /
                                                                   "scheduler_config.json").read_text()))
        pipe = StableDiffusionXLPipeline(vae=vae_model, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                         tokenizer_2=tok2, unet=unet_model, scheduler=scheduler)
        pipe.save_pretrained(folder, safe_serialization=True)
    stamp.write_text(json.dumps(manifest))
    return folder


def build_mid_model(folder: Path, seed: int = SEED) -> Path:
    """The mid-size SDXL-architecture diffusers folder (reused when its manifest matches)."""
    return build_sdxl_folder(folder, mid_unet_config(), mid_vae_config(), MID_TEXT, seed=seed)


def _mid_scorer_model():
    from transformers import CLIPConfig

    from tlcm_train.preference.mps import CrossConfig, MPSModel
    clip = CLIPConfig(text_config=MID_SCORER["text"], vision_config=MID_SCORER["vision"],
                      projection_dim=MID_SCORER["projection_dim"], logit_scale_init_value=math.log(100.0))
    return MPSModel(clip, CrossConfig(**MID_SCORER["cross"]))


def build_mid_scorer(path: Path, seed: int = SEED) -> Path:
    """A randomly initialised small MPS-architecture scorer (safetensors state dict)."""
    from safetensors.torch import save_file
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 11)
            state = _mid_scorer_model().state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def toy_scorer_usable(resolution: int) -> tuple[bool, str]:
    """Whether the toy scorer can score this benchmark's images (it cannot: it reads 32 px toy images)."""
    if not TOY_SCORER.is_file():
        return False, f"{TOY_SCORER.relative_to(ROOT)} does not exist"
    from tlcm_toy.data import SIZE
    if SIZE != resolution:
        return False, f"the toy scorer reads {SIZE} px toy images and toy-grammar prompts, not {resolution} px"
    return True, "toy scorer"


def mid_lora_rank(real_fraction: float) -> int:
    """The LoRA rank whose share of the mid-size UNet's parameters equals SDXL's r = 64 share."""
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        unet = UNet2DConditionModel(**mid_unet_config())
    base = count(unet)
    return max(1, round(64 * real_fraction * base / lora_count(unet, 64)))


# --- memory probes ---------------------------------------------------------------------------------------

def count(module: torch.nn.Module | list) -> int:
    params = module.parameters() if isinstance(module, torch.nn.Module) else module
    return sum(p.numel() for p in params)


def lora_count(unet: torch.nn.Module, rank: int) -> int:
    """Parameters of a TLCM-target LoRA of ``rank`` on ``unet`` (computed from the target shapes)."""
    from tlcm.lora import tlcm_target_modules
    total = 0
    modules = dict(unet.named_modules())
    for name in tlcm_target_modules(unet):
        m = modules[name]
        if isinstance(m, torch.nn.Linear):
            total += rank * (m.in_features + m.out_features)
        else:                                   # PEFT Conv2d LoRA: A = conv(in, r, k), B = conv(r, out, 1)
            kh, kw = m.kernel_size
            total += rank * m.in_channels * kh * kw + rank * m.out_channels
    return total


class Mem:
    """Process RSS and its high-water mark (VmHWM) in bytes; ``reset()`` restarts the high-water mark."""

    def __init__(self):
        self.resettable = True

    @staticmethod
    def _status(*keys: str) -> list[int]:
        text = Path("/proc/self/status").read_text()
        return [int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024 for key in keys]

    def rss(self) -> int:
        return self._status("VmRSS")[0]

    def hwm(self) -> int:
        return self._status("VmHWM")[0]

    def rss_and_hwm(self) -> tuple[int, int]:
        """Both from one read: the kernel reports VmHWM >= VmRSS within a read, while its per-thread RSS
        counters can drift by a few hundred KB between two reads."""
        rss, hwm = self._status("VmRSS", "VmHWM")
        return rss, hwm

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False


class CudaMem:
    """The CUDA caching allocator's bytes on the current device, in ``Mem``'s interface: ``rss`` = allocated
    now, ``hwm`` = its peak since ``reset``. No Python runtime is in them; the CUDA context and blocks the
    allocator caches but does not use are not counted (``torch.cuda.memory_reserved`` would)."""

    resettable = True

    @staticmethod
    def rss() -> int:
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    @staticmethod
    def hwm() -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def rss_and_hwm(self) -> tuple[int, int]:
        return self.rss(), self.hwm()

    @staticmethod
    def reset() -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def memory_probe() -> Mem | CudaMem:
    """Where the trainer runs: CUDA allocator figures on a GPU (the trainer takes the GPU whenever there is
    one), CPU RSS otherwise."""
    return CudaMem() if torch.cuda.is_available() else Mem()


def memory_kind(row: dict[str, Any]) -> str:
    """How a measured row's memory was read: ``cuda`` (allocator) or ``rss`` (CPU process)."""
    return row.get("memory", "rss")


def mid_memory_words(row: dict[str, Any]) -> str:
    return ("CUDA allocated, no runtime" if memory_kind(row) == "cuda" else
            f"CPU RSS, {row['rss_imports'] / 2 ** 20:,.0f} MiB runtime included")


def ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PhaseProbe:
    """Peak RSS of each phase of ``Trainer.train_step`` (phase = what ran since the previous mark), relative to
    the RSS at the step's start; ``start`` is the RSS when the phase began (what earlier phases left live)."""

    def __init__(self, mem: Mem):
        self.mem, self.steps, self._step, self._last, self._base = mem, [], [], 0, 0

    def begin_step(self) -> None:
        gc.collect()
        self.mem.reset()
        self._base = self._last = self.mem.rss()
        self._step = []

    def mark(self, name: str) -> None:
        now, peak = self.mem.rss_and_hwm()
        self._step.append({"phase": name, "start": self._last - self._base, "peak": max(peak, now) - self._base,
                           "end": now - self._base})
        self._last = now
        self.mem.reset()

    def end_step(self) -> dict[str, Any]:
        self.mark("rest")
        step = {"base": self._base, "phases": self._step}
        self.steps.append(step)
        return step


MID_MPS_TOKENIZER = {"folder": ""}      # set by ``measure``: the tokenizer the mid-size scorer reads


def _load_mid_mps(path: Path, dtype: torch.dtype):
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    from tlcm_train.preference.mps import MPSScorer, load_mps_state_dict
    model = _mid_scorer_model()
    load_mps_state_dict(model, load_file(str(path)))
    return MPSScorer(model, CLIPTokenizer.from_pretrained(MID_MPS_TOKENIZER["folder"])).to(dtype)


def _mid_mps_tensor_names() -> set[str]:
    with torch.device("meta"):
        return set(_mid_scorer_model().state_dict())


# The small MPS-architecture scorer as a trainer scorer plugin (the built-in ``mps`` is ViT-H-14 only).
MID_MPS_SCORER = ScorerPlugin("mid-size MPS", _load_mid_mps, _mid_mps_tensor_names)


def param_counts(trainer) -> dict[str, int]:
    techniques = trainer.techniques
    lora = {id(p) for n, p in trainer.unet.named_parameters() if "lora_" in n}
    return {
        "unet_base": sum(p.numel() for p in trainer.unet.parameters() if id(p) not in lora),
        "student_lora": count(trainer.params),
        "fake_lora": count(techniques["dmd"].parameters()) if "dmd" in techniques else 0,
        "disc_heads": count(techniques["gan"].parameters()) if "gan" in techniques else 0,
        "scorer": count(techniques["mps"].scorer) if "mps" in techniques else 0,
        "vae": count(trainer.vae),
    }


def measure(overrides: list[str], *, scorer_weights: str | None = None, scorer_tokenizer: str | None = None,
            warmup: int = 1, steps: int = 2, components: bool = True, threads: int = 1) -> dict[str, Any]:
    """Build a ``Trainer`` from ``overrides`` in this process, run ``warmup`` + ``steps`` train steps of the
    configured stage and return its memory figures (bytes) and parameter counts."""
    from tlcm_train.config import load_config
    from tlcm_train.loop import Trainer
    torch.set_num_threads(threads)
    mem = memory_probe()
    gc.collect()
    rss_imports, imports_peak = mem.rss_and_hwm()
    mem.reset()
    started = time.perf_counter()
    if scorer_weights is not None:
        MID_MPS_TOKENIZER["folder"] = str(scorer_tokenizer)
        overrides = [*overrides, f"mps.scorer={__name__}:MID_MPS_SCORER"]
    probe = PhaseProbe(mem)
    trainer = Trainer(load_config(None, overrides), on_phase=probe.mark)
    gc.collect()
    rss_after_load, load_peak = mem.rss_and_hwm()
    out: dict[str, Any] = {"rss_imports": rss_imports, "imports_peak": imports_peak, "load_peak": load_peak,
                           "rss_after_load": rss_after_load, "ru_maxrss_after_load": ru_maxrss(),
                           "load_s": time.perf_counter() - started, "params": param_counts(trainer),
                           "memory": "cuda" if isinstance(mem, CudaMem) else "rss", "device": str(trainer.device),
                           "stage": trainer.stage(0).name, "batch": trainer.config.train.batch_size}
    times = []
    for i in range(warmup + steps):
        probe.begin_step()
        started = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - started)
        probe.end_step()
    gc.collect()
    warm, measured = probe.steps[:warmup], probe.steps[warmup:]
    out["rss_after_warmup"] = measured[0]["base"] if measured else probe.steps[-1]["base"]
    out["warmup_peak"] = max(s["base"] + max(p["peak"] for p in s["phases"]) for s in warm) if warm else None
    out["train_peak"] = max(s["base"] + max(p["peak"] for p in s["phases"]) for s in measured or warm)
    out["rss_end"] = mem.rss()
    out["step_bases"] = [s["base"] for s in probe.steps]     # RSS at each step's start (allocator drift)
    out["step_s"] = times
    phases: dict[str, dict[str, int]] = {}
    for step in measured or warm:
        for p in step["phases"]:
            old = phases.setdefault(p["phase"], {"start": 0, "peak": 0, "end": 0})
            for k in old:
                old[k] = max(old[k], p[k])
    out["phases"] = phases
    out["phase_order"] = [p["phase"] for p in (measured or warm)[-1]["phases"]]
    if components and "mps" in trainer.techniques:
        out["components"] = preference_components(trainer, mem)
    out["hwm_resettable"] = mem.resettable
    # the whole process's peak: the largest segment peak (VmHWM is per address space, reset by clear_refs);
    # ru_maxrss also holds the forking parent's high-water mark (exec folds it in), so it is only recorded
    out["process_peak"] = max([imports_peak, out["load_peak"], out["train_peak"], out["warmup_peak"] or 0,
                               *out.get("components", {}).get("peaks", [])])
    out["ru_maxrss_raw"] = ru_maxrss()
    return out


def preference_components(trainer, mem: Mem) -> dict[str, int]:
    """Own peak (above the RSS before) of the VAE decode + its backward, and of the scorer forward + backward
    on 2B images, as the preference term runs them (with its decode options)."""
    from tlcm_train.preference.decode import decode_latents
    tech, batch = trainer.techniques["mps"], trainer.config.train.batch_size
    g = torch.Generator().manual_seed(1)
    result = {}
    latents = torch.randn(batch, *trainer.latent_shape, generator=g).to(trainer.device).requires_grad_(True)
    gc.collect()
    mem.reset()
    before = mem.rss()
    if tech.decode_crop:
        latents = latents[..., :tech.decode_crop, :tech.decode_crop]
    images = decode_latents(tech.vae, latents, checkpoint=tech.decode_checkpoint)
    torch.autograd.grad(images.square().mean(), latents)
    result["vae_decode"] = mem.hwm() - before
    peaks = [mem.hwm()]
    size = trainer.config.train.resolution
    del images
    n_images = 2 * batch if batch > 1 else 1          # positives + negatives (none in a batch of one prompt)
    pixels = torch.rand(n_images, 3, size, size, generator=g).to(trainer.device).requires_grad_(True)
    prompts = (trainer.prompts * 2)[:n_images]
    gc.collect()
    mem.reset()
    before = mem.rss()
    torch.autograd.grad(tech.scorer(pixels, prompts).sum(), pixels)
    result["scorer"] = mem.hwm() - before
    result["peaks"] = peaks + [mem.hwm()]
    result["scored_images"] = n_images
    return result


# --- saved-activation proxies on the meta device ---------------------------------------------------------

class _FlashLike(torch.autograd.Function):
    """SDPA as flash/memory-efficient kernels save it (q, k, v, out, logsumexp), for meta tensors (whose
    SDPA falls back to the math path and would save the N² attention probabilities)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(*q.shape[:-1])
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):                                  # never called (meta forward only)
        raise NotImplementedError


@contextlib.contextmanager
def saved_bytes_counter(units: tuple[type, ...] = (), modules: list[torch.nn.Module] | None = None):
    """Count the bytes autograd saves for backward; with ``units``, bytes saved inside each such module
    (a gradient-checkpointing unit) are kept apart, and each unit's input size is summed."""
    import torch.nn.functional as F
    state = {"outside": 0, "inputs": 0, "unit": None, "unit_bytes": 0, "max_unit": 0}

    def pack(t):
        nbytes = t.numel() * t.element_size()
        if state["unit"] is not None:
            state["unit_bytes"] += nbytes
        else:
            state["outside"] += nbytes
        return t

    def pre(module, args):
        if state["unit"] is None:
            state["unit"], state["unit_bytes"] = module, 0
            first = args[0] if args else None
            if isinstance(first, torch.Tensor):
                state["inputs"] += first.numel() * first.element_size()

    def post(module, args, output):
        if state["unit"] is module:
            state["max_unit"] = max(state["max_unit"], state["unit_bytes"])
            state["unit"] = None

    handles = []
    for root in modules or []:
        for m in root.modules():
            if units and isinstance(m, units):
                handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    sdpa = F.scaled_dot_product_attention

    def flash_like(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        return _FlashLike.apply(q, k, v)          # masks (CLIP text, no grad here) do not change what is saved
    F.scaled_dot_product_attention = flash_like
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield state
    finally:
        F.scaled_dot_product_attention = sdpa
        for h in handles:
            h.remove()
    state["checkpointed"] = state["outside"] + state["inputs"] + state["max_unit"]


def unet_proxy(unet_config: dict[str, Any], latent: int, rank: int, batch: int = 1) -> dict[str, int]:
    """Saved bytes (fp32) of one student forward with grad: ``checkpointed`` = outside the checkpoint units +
    the units' inputs + the largest unit's own saved bytes (what diffusers' gradient checkpointing keeps at
    the backward's peak); ``full`` = everything, as without checkpointing."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from peft import LoraConfig as PeftLoraConfig

    from tlcm.lora import TLCM_TARGET_SUFFIXES
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    unet.requires_grad_(False)
    unet.add_adapter(PeftLoraConfig(r=rank, lora_alpha=8, target_modules=list(TLCM_TARGET_SUFFIXES)),
                     adapter_name="student")
    for n, p in unet.named_parameters():
        p.requires_grad_(".student." in n)
    cross, pooled = unet_config["cross_attention_dim"], unet_config["projection_class_embeddings_input_dim"] - 1536
    with torch.device("meta"):
        z = torch.empty(batch, 4, latent, latent)
        t = torch.full((batch,), 500)
        kwargs = dict(encoder_hidden_states=torch.empty(batch, 77, cross),
                      added_cond_kwargs={"text_embeds": torch.empty(batch, pooled), "time_ids": torch.empty(batch, 6)})
    result = {}
    with saved_bytes_counter((ResnetBlock2D, BasicTransformerBlock), [unet]) as state:
        unet(z, t, **kwargs)
    result["checkpointed"] = state["checkpointed"]
    with saved_bytes_counter() as state:
        unet(z, t, **kwargs)
    result["full"] = state["outside"]
    return result


def vae_decode_proxy(vae_config: dict[str, Any], latent: int, unit_checkpointing: bool = False) -> int:
    """Saved bytes (fp32) of one image's VAE decode with grad to the latents, run as ``decode_latents`` runs
    it (the same unit chain): all units' saved tensors, or with ``unit_checkpointing`` what
    ``checkpoint="unit"`` holds at the backward's peak (every unit's input + the largest unit's own)."""
    from diffusers import AutoencoderKL

    from tlcm_train.preference.decode import decoder_units
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
        h = torch.empty(1, 4, latent, latent, requires_grad=True)
    vae.requires_grad_(False)
    inputs, saved = 0, []
    for unit in decoder_units(vae):
        inputs += h.numel() * h.element_size()
        with saved_bytes_counter() as state:
            h = unit(h)
        saved.append(state["outside"])
    return inputs + max(saved) if unit_checkpointing else sum(saved)


def scorer_proxy(model_fn: Callable[[], torch.nn.Module], images: int) -> int:
    """Saved bytes (fp32) of a scorer forward with grad to ``images`` pixels (text side runs without grad)."""
    with torch.device("meta"):
        model = model_fn()
        pixels = torch.empty(images, 3, 224, 224, requires_grad=True)
        ids = torch.zeros(images, 77, dtype=torch.long)
    model.requires_grad_(False)
    with saved_bytes_counter() as state:
        model(pixels, ids, ids)
    return state["outside"]


def sdxl_parameter_counts() -> dict[str, int]:
    """Exact parameter counts of real SDXL's trainable and resident parts, built on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tlcm_train.adapters import add_student
    from tlcm_train.adversarial import Adversarial
    from tlcm_train.config import LoraConfig
    from tlcm_train.diffusion import Denoiser
    from tlcm_train.dmd import DistributionMatching
    from tlcm_train.preference.mps import MPSModel, clip_vit_h14_config
    sched = json.loads((SDXL_CONFIG / "scheduler" / "scheduler_config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl_unet_config())
        vae = AutoencoderKL(**sdxl_vae_config())
        mps = MPSModel(clip_vit_h14_config())
    base = count(unet)
    student = count(add_student(unet, LoraConfig()))
    den = Denoiser(unet, sched, torch.device("meta"))
    fake = count(DistributionMatching(den).parameters())
    heads = count(Adversarial(den).parameters())
    return {"unet_base": base, "student_lora": student, "fake_lora": fake, "disc_heads": heads,
            "scorer": count(mps), "vae": count(vae), "vae_decoder": count(vae.decoder) + count(vae.post_quant_conv)}


# --- the real-SDXL arithmetic ----------------------------------------------------------------------------

def is_preference_phase(name: str) -> bool:
    return name.startswith("term:") and name not in ("term:dmd", "term:gan")


def sdxl_budget(mid: dict[str, dict[str, Any]], real: dict[str, int], factors: dict[str, float],
                act_dtype_factor: float, adam_bytes: int, scorer_bytes: int, vae_bytes: int,
                vae_factor: str) -> dict[str, dict[str, float]]:
    """Estimated peak (bytes) of each stage of real SDXL at 1024² from the mid-size phase measurements.

    Resident: UNet bf16, LoRA masters fp32 (+ grads 4 B while they exist, + AdamW states ``adam_bytes``/param);
    stages 3-4 also the decoding VAE (``vae_bytes``/param) and the scorer (``scorer_bytes``/param); stage 4
    the fake LoRA and the heads. Transient, per phase of a step: what earlier phases left live (UNet-scale
    activations, scaled by ``factors['unet']``) + the phase's own (UNet-scale, or for the preference term the
    larger of VAE decode x ``factors[vae_factor]`` and scorer x ``factors['scorer']``) + the LoRA grads that
    phase holds, exactly; AdamW's foreach temporaries on CUDA ≈ 1 fp32 copy of the stepped parameters.
    """
    out = {}
    for key, m in mid.items():
        stage = m["stage"]
        p_mid, grads_mid = m["params"], {k: 4 * v for k, v in m["params"].items()}
        grads_real = {k: 4 * v for k, v in real.items()}
        dm, pref = stage == "dm", stage in ("mps", "dm")
        resident = {"unet_bf16": 2 * real["unet_base"], "student_lora_fp32": 4 * real["student_lora"],
                    "student_adamw": adam_bytes * real["student_lora"]}
        if pref:
            resident.update(vae=vae_bytes * real["vae"], scorer=scorer_bytes * real["scorer"])
        if dm:
            resident.update(fake_lora_fp32=4 * real["fake_lora"], fake_adamw=adam_bytes * real["fake_lora"],
                            heads_fp32=4 * real["disc_heads"], heads_adamw=adam_bytes * real["disc_heads"])
        u = factors["unet"] * act_dtype_factor
        phases = {}
        for name, ph in m["phases"].items():
            carried, own = ph["start"], ph["peak"] - ph["start"]
            carried_grads = own_grads = 0
            real_extra = 0.0
            if name == "backward":
                own, own_grads = max(0, own - grads_mid["student_lora"]), grads_real["student_lora"]
            elif name == "optimizer":
                carried = max(0, carried - grads_mid["student_lora"])
                carried_grads = grads_real["student_lora"]
                own, real_extra = 0, 4 * real["student_lora"]          # foreach temporaries (assumed)
            elif name == "update:dmd":
                own, own_grads = max(0, own - grads_mid["fake_lora"]), grads_real["fake_lora"]
                real_extra = 4 * real["fake_lora"]
            if is_preference_phase(name) and "components" in m:
                c = m["components"]
                own_real = max(factors[vae_factor] * c["vae_decode"],          # scorer activations in its dtype
                               factors["scorer"] * c["scorer"] * scorer_bytes / 4)
            else:
                own_real = u * own
            phases[name] = u * carried + carried_grads + own_real + own_grads + real_extra
        peak_phase = max(phases, key=phases.get)
        total = sum(resident.values()) + phases[peak_phase]
        out[key] = {"resident": resident, "resident_total": sum(resident.values()), "phases": phases,
                    "peak_phase": peak_phase, "transient": phases[peak_phase], "total": total,
                    "mid_param_share": p_mid["student_lora"] / p_mid["unet_base"]}
    return out


# --- orchestration ---------------------------------------------------------------------------------------

def run_key(stage: str, batch: int, variant: str) -> str:
    return f"{stage}_b{batch}" + (f"_{variant}" if variant else "")


def rows_for(mid: dict[str, dict[str, Any]], variant: str) -> dict[str, dict[str, Any]]:
    """One variant's rows under the default rows' keys: stages 1-2 have no decode, so their default rows
    serve every variant; stages 3-4 take the row measured with ``variant``'s options, or are left out."""
    rows = {}
    for key, m in mid.items():
        if m.get("variant", ""):
            continue
        own = key if m["stage"] in ("mlcd", "lcd") else run_key(m["stage"], m["batch"], variant)
        if own in mid:
            rows[key] = mid[own]
    return rows


def run_overrides(model: Path, prompts: Path, out: Path, stage: str, batch: int, rank: int,
                  scorer_weights: str, variant: str = "") -> list[str]:
    steps = {s: (3 if s == stage else 0) for s in ("mlcd", "lcd", "mps", "dm")}
    return [f"model.path={model}", f"data.prompts=[{prompts}]", f"output.dir={out}", "output.sample_every=0",
            "output.checkpoint_every=0", "train.gradient_checkpointing=true",
            "train.optimizer=adamw", f"train.resolution={RESOLUTION}", f"train.batch_size={batch}",
            f"lora.rank={rank}", f"dm.fake_rank={rank}", f"mps.scorer_weights={scorer_weights}",
            "mps.batch_size=0", "dm.batch_size=0",      # one micro-batch per step: accumulation adds no peak
            *FAST_LOOPS, *[f"{s}.steps={n}" for s, n in steps.items()], *VARIANTS.get(variant, [])]


def run_child(spec: dict[str, Any], script: str = __file__, threads: int = 1) -> dict[str, Any]:
    """``script --child SPEC`` in a fresh process (its own peak), ``threads`` intra-op threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MALLOC_MMAP_THRESHOLD_="131072", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec['key']} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = time.perf_counter() - started
    return result


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    result = measure(spec["overrides"], scorer_weights=spec.get("scorer_weights"),
                     scorer_tokenizer=spec.get("scorer_tokenizer"))
    print("RESULT " + json.dumps(result), flush=True)


def mib(x: float) -> str:
    return f"{x / 2 ** 20:,.0f}"


def gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def markdown(rec: dict[str, Any]) -> str:
    mid, real, est = rec["mid"], rec["sdxl"], rec["estimates"]
    b0 = rec["batches"][0]
    first, full = mid[f"mlcd_b{b0}"], mid[f"dm_b{b0}"]
    counts = full["params"]
    cuda = memory_kind(first) == "cuda"
    label = "CUDA allocated" if cuda else "RSS"
    how = ("**These are CUDA allocator figures of a mid-size model** on " + rec.get("gpu", "a GPU") + ": "
           "`torch.cuda.max_memory_allocated`, its peak reset with `torch.cuda.reset_peak_memory_stats` after the "
           "model load and at every phase boundary. No Python runtime is in them; the CUDA context and blocks the "
           "allocator caches without using them are not either." if cuda else
           "**These are CPU RSS figures of a mid-size model, not CUDA figures.** RSS counts the Python/torch runtime "
           f"({mib(first['rss_imports'])} MiB after imports) and whatever the allocator holds; glibc's mmap threshold "
           "is pinned in the measuring processes so freed tensors leave RSS. Peaks are Linux `VmHWM`, reset via "
           "`/proc/self/clear_refs` after the model load and at every phase boundary, so the load does not mask "
           "the training peak; the whole-process peak is the largest segment peak. `getrusage().ru_maxrss` is "
           f"recorded in the JSON but not used: it read {mib(first['ru_maxrss_raw'])} MiB in every child, because "
           "`exec` folds the forking parent's high-water mark into it.")
    lines = [
        "# Peak memory per training stage (issue 6 item 8)", "",
        f"Reproduce: `{rec['command']}` ({rec['runtime_s'] / 60:.1f} min). Machine: {rec['machine']}; torch "
        f"{rec['torch']}, 1 thread, fp32 (`train.mixed_precision=no`), gradient checkpointing on, AdamW.", "",
        how, "",
        "## Mid-size model", "",
        f"SDXL base's UNet config with widths / {WIDTH_DIVISOR} ({MID_UNET['block_out_channels']}, heads of 64), "
        f"transformer layers {MID_UNET['transformer_layers_per_block']} (SDXL [1, 2, 10]), cross-attention "
        f"{sum(MID_TEXT)}; VAE = SDXL's config at {MID_VAE['block_out_channels']}; {RESOLUTION} px (32² latents). "
        f"LoRA rank {rec['mid_rank']} (student and fake) = the share of the UNet that SDXL's r = 64 LoRA has "
        f"({100 * rec['real_share']:.2f} %). Scorer: {rec['scorer_note']}. The no-grad solver loops are shortened "
        f"({', '.join(FAST_LOOPS)}): they keep nothing alive across UNet calls, so only time changes. Each row is a "
        "fresh process: 1 warm-up step (allocates the AdamW states) + 2 measured steps.", "",
        "| Parameters | base UNet | student LoRA | fake LoRA | D heads | scorer | VAE |", "|---|---|---|---|---|---|---|",
        "| mid-size | " + " | ".join(f"{counts[k] / 1e6:.2f} M" for k in
                                     ("unet_base", "student_lora", "fake_lora", "disc_heads", "scorer", "vae")) + " |",
        "| real SDXL | " + " | ".join(f"{real[k] / 1e6:,.1f} M" for k in
                                      ("unet_base", "student_lora", "fake_lora", "disc_heads", "scorer", "vae")) + " |",
        "", f"{label} in MiB:", "",
        "| Stage | batch | decode options | after load | load peak | after warm-up | training peak | training − after load | "
        "whole-process peak | step s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, m in mid.items():
        lines.append(f"| {STAGE_STEPS[m['stage']]} | {m['batch']} | {_options(m)} | {mib(m['rss_after_load'])} | "
                     f"{mib(m['load_peak'])} "
                     f"| {mib(m['rss_after_warmup'])} | {mib(m['train_peak'])} | "
                     f"{mib(m['train_peak'] - m['rss_after_load'])} | {mib(m['process_peak'])} | "
                     f"{sum(m['step_s'][1:]) / max(1, len(m['step_s']) - 1):.1f} |")
    lines += ["", "Decode options of the rows: " + "; ".join(f"{VARIANT_NOTES[v]}: "
              + (" ".join(f"`{o}`" for o in VARIANTS[v]) if v else "the trainer's defaults on a CPU (unit-checkpointed "
                 "fp32 decode, fp32 scorer)") for v in VARIANT_NOTES) + ".", "",
              "Stage 4 / stage 1 training peak, by decode options: " + "; ".join(
                  f"{_options(mid[k])} at batch {mid[k]['batch']}: **{r:.2f}x**" for k, r in rec["variant_ratios"].items())
              + ".", ""]
    for b in rec["batches"]:
        r, nc, f1, f4 = rec["ratios"][f"b{b}"], rec["no_copy"][f"b{b}"], mid[f"mlcd_b{b}"], mid[f"dm_b{b}"]
        lines += [f"Full pipeline (stage 4) vs stage 1 at batch {b}, mid-size: training peak **{r['train_peak']:.2f}x**; "
                  f"whole-process peak (the load included) {r['process_peak']:.2f}x; without the runtime ({label} after "
                  f"imports) {r['model_attributable']:.2f}x; over stage 1's post-load baseline (peak − stage-1 {label} after "
                  f"load) {r['over_baseline']:.2f}x; each over its own post-load {label}: stage 1 "
                  f"{mib(f1['train_peak'] - f1['rss_after_load'])} MiB, stage 4 {mib(f4['train_peak'] - f4['rss_after_load'])} "
                  f"MiB. No second UNet copy: stage 4's {label} after load exceeds stage 1's by {mib(nc['rss_delta'])} MiB; "
                  f"the parameters stage 4 adds (fake LoRA, heads, scorer) are {mib(nc['added_bytes'])} MiB in fp32, a "
                  f"UNet copy would be {mib(nc['unet_bytes'])} MiB; after the warm-up (AdamW states of the fake LoRA "
                  f"and heads) the gap is {mib(nc['warm_delta'])} MiB.", ""]
    lines += [
              f"Peak {label} of each phase of a measured step above the {label} at the step's start (MiB; `start` = what "
              "earlier phases left live):", "",
              "| Stage | batch | decode options | " + " | ".join(rec["phase_names"]) + " |",
              "|---|---|---|" + "---|" * len(rec["phase_names"])]
    for key, m in mid.items():
        cells = [f"{mib(m['phases'][p]['peak'])} ({mib(m['phases'][p]['start'])})" if p in m["phases"] else "–"
                 for p in rec["phase_names"]]
        lines.append(f"| {STAGE_STEPS[m['stage']]} | {m['batch']} | {_options(m)} | " + " | ".join(cells) + " |")
    lines += ["", f"{label} at the start of each step (MiB; allocator drift after the warm-up): " + "; ".join(
        f"{key} " + " → ".join(mib(b) for b in m["step_bases"]) for key, m in mid.items())]
    parts = [f"{_options(m)}, batch {m['batch']}: VAE decode + backward {mib(m['components']['vae_decode'])} MiB, "
             f"scorer forward + backward on {m['components'].get('scored_images', 2 * m['batch'])} image(s) "
             f"{mib(m['components']['scorer'])} MiB" for key, m in mid.items() if m["stage"] == "dm" and "components" in m]
    if parts:
        lines += ["", "Preference term parts (stage 4 process, own peak): " + "; ".join(parts) + "."]
    f = rec["factors"]
    lines += ["", "## Real SDXL, 1024² (arithmetic; activations are an estimate)", "",
              f"Parameter counts are exact (SDXL's UNet config built on `meta`, LoRAs added by the trainer's own "
              f"`add_student` / `DistributionMatching`, heads by `Adversarial`, MPS = CLIP-ViT-H-14 + cross model). "
              f"Activation scaling: the mid-size phase increments are multiplied by the ratio of the bytes autograd "
              f"saves in the real vs the mid-size module, counted on `meta` (SDPA counted as flash kernels save it): "
              f"UNet student forward with diffusers' checkpoint units (outside units + unit inputs + largest unit) "
              f"{f['unet']:.1f}x (latent area 16x x width 5x = 80x; full no-checkpoint volume ratio "
              f"{f['unet_full']:.1f}x), one-image VAE decode, each from the mid-size row measured with the same decode "
              f"options: plain {f['vae_plain']:.1f}x, unit-checkpointed {f['vae_unit']:.1f}x (halved for the bf16 "
              f"decode), crop {SDXL_CROP} vs {MID_CROP} {2 * f['vae_crop_bf16']:.1f}x (halved likewise); the halving "
              f"is checked by the mid-size bf16 row above. Scorer {f['scorer']:.1f}x (halved for an fp16 scorer). "
              f"The preference phase "
              f"takes the larger of the scaled VAE-decode and scorer parts measured on their own. UNet "
              f"activations are then halved for bf16 (column 'bf16 act.'; 'fp32 act.' is the upper bound: outside "
              f"autocast PEFT runs the LoRA branch in fp32). LoRA grads are added exactly; AdamW on CUDA is assumed to "
              f"need one fp32 temporary of the stepped parameters (foreach). CUDA context and allocator "
              f"fragmentation (≈0.5–1.5 GiB) are not included.", "",
              "| Stage | batch | variant | resident GiB | peak phase | transient GiB | total GiB (bf16 act.) | "
              "total GiB (fp32 act.) | vs stage 1 same batch | fits 24 GiB (−1.5 GiB overhead) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, by_key in est.items():
        for key, e in by_key["bf16"].items():
            e32 = by_key["fp32"][key]
            m = mid[key]
            s1 = by_key["bf16"].get(f"mlcd_b{m['batch']}")
            ratio = e["total"] / s1["total"] if s1 else float("nan")
            fits = ("yes" if e32["total"] + 1.5 * GiB <= 24 * GiB else
                    "bf16 only" if e["total"] + 1.5 * GiB <= 24 * GiB else "no")
            lines.append(f"| {STAGE_STEPS[m['stage']]} | {m['batch']} | {variant} | {gib(e['resident_total'])} | "
                         f"{e['peak_phase']} | {gib(e['transient'])} | {gib(e['total'])} | {gib(e32['total'])} | "
                         f"{ratio:.2f}x | {fits} |")
    lines += ["", "## Conclusion", "", *rec["conclusion"], ""]
    if cuda:
        return "\n".join(lines)
    lines += ["## Notes", "",
              "- Batch-1 rows keep ≈15-20 MiB more allocator-retained memory across steps than the "
              "batch-2 rows (see the step-start RSS drift); scaled by the UNet factor this adds ≈0.3 GiB to their real "
              "estimates (it is why some batch-1 estimates exceed batch 2's).",
              "- Step times are wall-clock on a CPU shared with other jobs; they are not a speed benchmark.",
              "- The load peak (≈210 MiB above the post-load RSS) comes from the text encoders and the copy "
              "`load_sdxl_pipeline` makes of memory-mapped CPU weights; both are gone before training. On a GPU the "
              "text encoders are loaded to the device in the weight dtype and unloaded after caching, well below the "
              "training peaks above.",
              "- Scaling assumes activations linear in the autograd-saved volume; attention is counted as flash / "
              "memory-efficient SDPA saves it (no N² probabilities), which is what the CPU run used too.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help="keep the built model here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results path without suffix; the committed ones are bench/results/memory_stages")
    parser.add_argument("--measured", type=Path, help="reuse the mid-size measurements of an earlier results "
                        ".json (only the arithmetic is redone)")
    parser.add_argument("--runs", default=",".join(f"{s}:{b}:{v}" for s, b, v in RUNS),
                        help="stage:batch:variant,... to measure (variant: empty or one of " + ", ".join(VARIANTS) + ")")
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    runs = [(s, int(b), v) for s, b, v in ((item.split(":") + [""])[:3] for item in args.runs.split(","))]
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tlcm-memory-")))
        work.mkdir(parents=True, exist_ok=True)
        print("real SDXL parameter counts (meta) ...", flush=True)
        real = sdxl_parameter_counts()
        real_share = real["student_lora"] / real["unet_base"]
        rank = mid_lora_rank(real_share)
        model = build_mid_model(work / "model")
        _, why = toy_scorer_usable(RESOLUTION)
        weights = str(build_mid_scorer(work / "mid_mps_scorer.safetensors"))
        scorer_note = (f"a randomly initialised small MPS-architecture scorer ({count(_mid_scorer_model()) / 1e6:.1f} "
                       "M parameters: CLIP text 128x2, vision 128x4 at 224 px, cross model 128x4) built in the "
                       "measuring process and handed to the trainer as a scorer plugin (`mps.scorer=...:MID_MPS_SCORER`); not the toy "
                       f"scorer: {why}")
        prompts = work / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        mid = json.loads(args.measured.read_text())["mid"] if args.measured else {}
        for stage, batch, variant in runs:
            key = run_key(stage, batch, variant)
            if key in mid:
                continue
            print(f"measuring {key} ...", flush=True)
            spec = {"key": key, "overrides": run_overrides(model, prompts, work / f"out_{key}", stage, batch, rank,
                                                           weights, variant),
                    "scorer_weights": weights, "scorer_tokenizer": str(model / "tokenizer")}
            mid[key] = dict(run_child(spec), variant=variant)
            m = mid[key]
            print(f"  after load {mib(m['rss_after_load'])} MiB, training peak {mib(m['train_peak'])} MiB, "
                  f"{m['wall_s']:.0f} s", flush=True)
        print("saved-activation proxies (meta) ...", flush=True)
        u_real, u_mid = (unet_proxy(sdxl_unet_config(), SDXL_RESOLUTION // 8, 64),
                         unet_proxy(mid_unet_config(), RESOLUTION // 8, rank))
        sdxl_latent, mid_latent = SDXL_RESOLUTION // 8, RESOLUTION // 8
        v = {"real_plain": vae_decode_proxy(sdxl_vae_config(), sdxl_latent),
             "mid_plain": vae_decode_proxy(mid_vae_config(), mid_latent),
             "real_unit": vae_decode_proxy(sdxl_vae_config(), sdxl_latent, unit_checkpointing=True),
             "mid_unit": vae_decode_proxy(mid_vae_config(), mid_latent, unit_checkpointing=True),
             "real_crop": vae_decode_proxy(sdxl_vae_config(), SDXL_CROP, unit_checkpointing=True),
             "mid_crop": vae_decode_proxy(mid_vae_config(), MID_CROP, unit_checkpointing=True)}
        from tlcm_train.preference.mps import MPSModel, clip_vit_h14_config
        s_real, s_mid = scorer_proxy(lambda: MPSModel(clip_vit_h14_config()), 4), scorer_proxy(_mid_scorer_model, 4)
    # each decode factor scales a mid-size measurement made with the same decode options to real SDXL
    factors = {"unet": u_real["checkpointed"] / u_mid["checkpointed"], "unet_full": u_real["full"] / u_mid["full"],
               "vae_plain": v["real_plain"] / v["mid_plain"], "vae_unit": v["real_unit"] / v["mid_unit"],
               "vae_unit_bf16": v["real_unit"] / v["mid_unit"] / 2, "vae_crop_bf16": v["real_crop"] / v["mid_crop"] / 2,
               "scorer": s_real / s_mid}
    proxies = {"unet_real": u_real, "unet_mid": u_mid, "vae": v, "scorer_real": s_real, "scorer_mid": s_mid}
    estimates = {}
    for name, (suffix, adam, scorer, vae_bytes, vae_factor) in SDXL_VARIANTS.items():
        rows = rows_for(mid, suffix)
        estimates[name] = {dt: sdxl_budget(rows, real, factors, f, adam, scorer, vae_bytes, vae_factor)
                           for dt, f in (("bf16", 0.5), ("fp32", 1.0))}
    batches = [b for b in BATCHES if f"mlcd_b{b}" in mid and f"dm_b{b}" in mid]
    ratios, no_copy = {}, {}
    for b in batches:
        first, full = mid[f"mlcd_b{b}"], mid[f"dm_b{b}"]
        no_copy[f"b{b}"] = {"rss_delta": full["rss_after_load"] - first["rss_after_load"],
                            "warm_delta": full["rss_after_warmup"] - first["rss_after_warmup"],
                            "added_bytes": 4 * sum(full["params"][k] for k in ("fake_lora", "disc_heads", "scorer")),
                            "unet_bytes": 4 * first["params"]["unet_base"]}
        ratios[f"b{b}"] = {
            "train_peak": full["train_peak"] / first["train_peak"],
            "process_peak": full["process_peak"] / first["process_peak"],
            "model_attributable": ((full["train_peak"] - full["rss_imports"])
                                   / (first["train_peak"] - first["rss_imports"])),
            "over_baseline": ((full["train_peak"] - first["rss_after_load"])
                              / (first["train_peak"] - first["rss_after_load"]))}
    variant_ratios = {key: m["train_peak"] / mid[f"mlcd_b{m['batch']}"]["train_peak"] for key, m in mid.items()
                      if m["stage"] == "dm" and f"mlcd_b{m['batch']}" in mid}
    b0 = batches[0]
    first = mid[f"mlcd_b{b0}"]
    conclusion = [
        f"- Mid-size, measured ({mid_memory_words(first)}): stage-4 training peak / "
        "stage-1's, target 1.6x: " + "; ".join(
            f"{VARIANT_NOTES[mid[key].get('variant', '')]}, batch {mid[key]['batch']}: {r:.2f}x "
            f"({'met' if r <= 1.6 else 'missed'})" for key, r in variant_ratios.items())
        + ". No stage holds a second UNet (the after-load gap above is the fake LoRA, heads and scorer). Decode + "
        "its backward, measured alone: " + "; ".join(
            f"{VARIANT_NOTES[m.get('variant', '')]} {mib(m['components']['vae_decode'])} MiB"
            for key, m in mid.items() if m["stage"] == "dm" and m["batch"] == b0 and "components" in m) + "."]
    for name, by in estimates.items():
        e, e32 = by["bf16"], by["fp32"]
        conclusion.append(f"- Real SDXL, {name}: " + "; ".join(
            f"batch {b}: stage 4 ≈ {gib(e[f'dm_b{b}']['total'])} GiB (fp32 UNet activations "
            f"{gib(e32[f'dm_b{b}']['total'])}), stage 1 ≈ {gib(e[f'mlcd_b{b}']['total'])} GiB, ratio "
            f"{e[f'dm_b{b}']['total'] / e[f'mlcd_b{b}']['total']:.2f}x, peak in `{e[f'dm_b{b}']['peak_phase']}`"
            for b in batches if f"dm_b{b}" in e) + ".")
    conclusion.append(target_floor(estimates))
    rec = {"command": " ".join(["python bench/memory_stages.py", *(argv if argv is not None else sys.argv[1:])]),
           "runtime_s": time.perf_counter() - started,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
                      f"{platform.system()} {platform.release()}",
           "cpu_model": _cpu_model(), "torch": torch.__version__, "mid_rank": rank, "real_share": real_share,
           "scorer_note": scorer_note, "mid": mid, "sdxl": real, "factors": factors, "proxies": proxies,
           "estimates": estimates, "ratios": ratios, "variant_ratios": variant_ratios, "batches": batches,
           "phase_names": _phase_names(mid), "conclusion": conclusion, "no_copy": no_copy,
           "mid_unet_config": mid_unet_config(), "mid_vae_config": mid_vae_config(), "mid_scorer": MID_SCORER}
    rec["machine"] = f"{rec['cpu_model']}, {os.cpu_count()} cores shared with other jobs"
    if memory_kind(first) == "cuda":
        rec["gpu"] = torch.cuda.get_device_name()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rec, indent=1, default=str))
    args.out.with_suffix(".md").write_text(markdown(rec))
    print(markdown(rec))


def target_floor(estimates: dict[str, dict[str, dict[str, Any]]], target: float = 1.6) -> str:
    """Why the whole-image preference term cannot meet the target at SDXL size: stage 4's resident bytes
    alone against stage 1's peak, and what that leaves for the preference term's decode and scorer."""
    parts, meeting = [], []
    for name, by in estimates.items():
        e = by["bf16"]
        if "dm_b1" not in e or "mlcd_b1" not in e:
            continue
        stage1, stage4 = e["mlcd_b1"]["total"], e["dm_b1"]
        parts.append(f"{name.split(':')[0]}: resident {stage4['resident_total'] / stage1:.2f}x, leaving "
                     f"{gib(target * stage1 - stage4['resident_total'])} GiB for a step's activations against "
                     f"{gib(stage4['transient'])} GiB needed (`{stage4['peak_phase']}`)")
        if stage4["total"] <= target * stage1:
            meeting.append(name.split(":")[0])
    return (f"- The {target}x target at SDXL 1024², batch 1 (bf16 activations): stage 4's resident bytes (the fake "
            "LoRA and its AdamW states, the scorer, the heads) over stage 1's whole peak — " + "; ".join(parts)
            + f". Met by: {', '.join(meeting) or 'none'}. A whole-image preference term needs the VAE decode's "
            "backward at 1024² (unit-checkpointed and bf16 in A and B) on top of the resident bytes.")


def _options(m: dict[str, Any]) -> str:
    return VARIANT_NOTES[m.get("variant", "")] if m["stage"] in ("mps", "dm") else "–"


def _phase_names(mid: dict[str, dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for m in mid.values():
        for p in m["phase_order"]:
            if p not in names:
                names.append(p)
    return names


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
