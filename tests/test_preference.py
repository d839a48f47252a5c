"""The preference loss (TLCM Eq. 11): hinge values, the MPS re-implementation (tiny random config: state
dict round trip, key checks, conversion of a pickled whole model, gradients to the images), the
memory-saving decode, the exact student gradient through with_aux, and the committed toy scorer."""
from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig

from tlcm.testing.tiny import CROSS_ATTENTION_DIM, SCHEDULER_CONFIG, TEXT_WIDTH_2, tiny_unet, tiny_vae
from tlcm_train.adapters import add_student, require_student_active, student_parameters
from tlcm_train.aux_grad import with_aux
from tlcm_train.config import LoraConfig
from tlcm_train.diffusion import Conditioning, Denoiser, sdxl_time_ids
from tlcm_train.preference.decode import crop_window, decode_latents
from tlcm_train.preference.mps import (CrossConfig, MPSModel, MPSScorer, clip_preprocess, load_mps_state_dict,
                                       mps_tokenizer, read_state_dict)
from tlcm_train.preference.mps_convert import convert_pickled_checkpoint
from tlcm_train.preference.scorer import build_scorer, hinge_preference_loss
from tlcm_train.preference.technique import PreferenceTechnique, unrelated_pairs
from tlcm_toy.scorer import PLUGIN as TOY
from tlcm_toy.scorer import (DEFAULT_WEIGHTS, HELD_OUT_SEVERITY, change_attributes, degrade,
                                         file_sha256, label_ids, parse_prompt, toy_vae)
from tlcm_train.technique import AuxBatch
from tlcm_toy.data import generate, prompt, prompts_for
from tlcm_toy.sanity import blur

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny models, shared cores

TINY_CLIP = dict(
    text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8),
    projection_dim=16)
TINY_CROSS = CrossConfig(dim=16, layers=2, heads=2, dim_head=8, ff_mult=2)
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red solid circle at the top left", "右下角的蓝色条纹正方形", "a photo of a cat"]


def tiny_mps(seed: int) -> MPSModel:
    torch.manual_seed(seed)
    return MPSModel(CLIPConfig(**TINY_CLIP), TINY_CROSS).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tokenizer():
    return mps_tokenizer()


@pytest.fixture(scope="module")
def scorer(tokenizer):
    return MPSScorer(tiny_mps(0), tokenizer)


def test_hinge_loss_at_and_around_the_margins():
    pos = torch.tensor([16.0, 17.0, 15.0, 0.0], requires_grad=True)
    neg = torch.tensor([0.0, -1.0, 0.5, 2.0], requires_grad=True)
    loss = hinge_preference_loss(pos, neg, margin=16.0)
    assert float(loss.detach()) == pytest.approx((0 + 0 + (1 + 0.5) + (16 + 2)) / 4)
    loss.backward()
    assert pos.grad[1:].tolist() == [0.0, -0.25, -0.25] and neg.grad[[1, 2, 3]].tolist() == [0.0, 0.25, 0.25]
    satisfied = hinge_preference_loss(torch.tensor([16.0, 30.0]), torch.tensor([0.0, -5.0]))   # s0 = 16 default
    assert float(satisfied) == 0.0
    assert float(hinge_preference_loss(torch.tensor([20.0]), torch.tensor([0.0]), margin=21.0)) == 1.0
    with pytest.raises(ValueError, match="must both be"):
        hinge_preference_loss(torch.zeros(2), torch.zeros(3))


def test_tiny_mps_round_trip_is_strict_and_exact(tmp_path, scorer, tokenizer):
    images = torch.rand(3, 3, 48, 40)
    expected = scorer(images, PROMPTS)
    assert expected.shape == (3,) and torch.isfinite(expected).all()
    save_file(scorer.mps.state_dict(), str(tmp_path / "mps.safetensors"))
    torch.save(scorer.mps.state_dict(), tmp_path / "mps.pth")
    for name in ("mps.safetensors", "mps.pth"):
        fresh = tiny_mps(1)
        load_mps_state_dict(fresh, read_state_dict(tmp_path / name))
        torch.testing.assert_close(MPSScorer(fresh, tokenizer)(images, PROMPTS), expected, rtol=0, atol=0)
    state = scorer.mps.state_dict()
    assert "cross_model.layers.0.0.fn.to_kv.weight" in state and "model.text_projection.weight" in state


def test_mps_refuses_wrong_keys_and_pickled_models_clearly(tmp_path, scorer):
    state = dict(scorer.mps.state_dict())
    model = tiny_mps(1)
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['model.logit_scale'\]\), 0 unexpected"):
        load_mps_state_dict(model, {k: v for k, v in state.items() if k != "model.logit_scale"})
    with pytest.raises(ValueError, match=r"1 unexpected \(e.g. \['head.weight'\]\)"):
        load_mps_state_dict(model, {**state, "head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="1 of the wrong shape"):
        load_mps_state_dict(model, {**state, "model.text_projection.weight": torch.zeros(16, 33)})
    torch.save(scorer.mps, tmp_path / "whole.pth")
    with pytest.raises(ValueError, match="convert it once"):
        read_state_dict(tmp_path / "whole.pth")
    save_file(state, str(tmp_path / "tiny.safetensors"))      # checked before ViT-H-14 is allocated
    with pytest.raises(ValueError, match="not an MPS state dict"):
        build_scorer("mps", tmp_path / "tiny.safetensors")


def test_convert_pickled_whole_model_without_its_classes(tmp_path, scorer, tokenizer):
    """The released checkpoint pickles upstream classes (and transformers 4.27's): none must be importable."""
    legacy = types.ModuleType("legacy_mps_trainer")
    legacy.Wrapper = type("Wrapper", (torch.nn.Module,), {"__module__": "legacy_mps_trainer"})
    sys.modules["legacy_mps_trainer"] = legacy
    try:
        whole = legacy.Wrapper()
        whole.model, whole.cross_model = tiny_mps(0).model, tiny_mps(0).cross_model
        # transformers < 4.31 stored position_ids as persistent buffers: the converter drops them
        whole.model.text_model.embeddings.register_buffer("position_ids", torch.arange(77)[None], persistent=True)
        torch.save(whole, tmp_path / "MPS_overall_checkpoint.pth")
    finally:
        del sys.modules["legacy_mps_trainer"]
    out = convert_pickled_checkpoint(tmp_path / "MPS_overall_checkpoint.pth", tmp_path / "mps.safetensors",
                                     CLIPConfig(**TINY_CLIP), TINY_CROSS)
    with pytest.raises(FileExistsError, match="mps.safetensors exists"):
        convert_pickled_checkpoint(tmp_path / "MPS_overall_checkpoint.pth", out, CLIPConfig(**TINY_CLIP), TINY_CROSS)
    model = tiny_mps(2)
    load_mps_state_dict(model, read_state_dict(out))
    images = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(MPSScorer(model, tokenizer)(images, PROMPTS), scorer(images, PROMPTS), rtol=0, atol=0)


class _Payload:
    """Unpickling it runs ``call(*args)``: what a malicious checkpoint does."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker):
    return {"os.system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
            "open": _Payload(open, str(marker), "w")}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["os.system", "open"])
@pytest.mark.parametrize("nested", [False, True], ids=["top", "in-module"])
def test_convert_refuses_code_in_the_pickle_and_runs_none(tmp_path, legacy, kind, nested):
    marker = tmp_path / "MARKER"
    payload = _payloads(marker)[kind]
    if nested:                                  # inside a submodule's attributes, as a whole-model pickle holds it
        payload, inner = torch.nn.Sequential(torch.nn.Linear(2, 2)), payload
        payload[0].extra = inner
    torch.save(payload, tmp_path / "evil.pth", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match="refusing to convert .*evil.pth: " + (
            "not a zip-format" if legacy else "it calls io.open" if kind == "open" else ".*posix is blocked")):
        convert_pickled_checkpoint(tmp_path / "evil.pth", tmp_path / "out.safetensors",
                                   CLIPConfig(**TINY_CLIP), TINY_CROSS)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_convert_command_refuses_a_payload_in_one_line(tmp_path, legacy):
    marker = tmp_path / "MARKER"
    torch.save(_payloads(marker)["os.system"], tmp_path / "evil.pth", _use_new_zipfile_serialization=not legacy)
    done = subprocess.run([sys.executable, "-m", "tlcm_train.preference.mps_convert", "convert",
                           str(tmp_path / "evil.pth"), str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0 and not marker.exists()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mps convert: refusing to convert"), done.stderr


def _directional_derivatives(score, images: torch.Tensor, seed: int, numeric_score=None, eps: float = 1e-2,
                             dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(gradient of the summed ``score`` · v, central difference of ``numeric_score`` (default ``score``) in
    ``dtype`` along v) for a seeded random direction v."""
    x = images.detach().clone().requires_grad_(True)
    score(x).sum().backward()
    v = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    numeric_score, base, v = numeric_score or score, images.detach().to(dtype), v.to(dtype)
    with torch.no_grad():
        numeric = (numeric_score(base + eps * v).sum() - numeric_score(base - eps * v).sum()) / (2 * eps)
    return float((x.grad.double() * v.double()).sum()), float(numeric)


def test_mps_gradient_reaches_the_images(scorer):
    """The images' gradient is the score's derivative (a central difference agrees), and none reaches the
    frozen scorer; the preprocessing is CLIPImageProcessor's (transformers' own, on the PIL image)."""
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor
    images = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(11))
    analytic, numeric = _directional_derivatives(lambda x: scorer(x, PROMPTS), images, seed=12)
    assert abs(numeric) > 1e-3 and analytic == pytest.approx(numeric, rel=0.02)    # measured 0.1 % apart
    assert all(p.grad is None for p in scorer.parameters())
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    y, x = np.mgrid[0:40, 0:72]
    ramp = np.stack([x * 255 // 72, y * 255 // 40, (x + y) * 127 // 72], -1).astype(np.uint8)   # not square
    for pixels, atol in ((noise, 0.01), (ramp, 0.05)):        # measured 0.004 and 0.017 (mean |difference|)
        ours = clip_preprocess(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255, 32)
        expected = torch.from_numpy(processor(Image.fromarray(pixels), return_tensors="np")["pixel_values"])
        assert ours.shape == expected.shape == (1, 3, 32, 32)
        assert float((ours - expected).abs().mean()) < atol


def test_missing_weights_say_what_to_get(tmp_path):
    with pytest.raises(FileNotFoundError, match="Kwai-Kolors/MPS.*tlcm_train.preference.mps_convert convert"):
        build_scorer("mps", tmp_path / "mps.safetensors")
    with pytest.raises(FileNotFoundError, match="python -m tlcm_toy.scorer"):
        build_scorer(TOY, tmp_path / "scorer.safetensors")
    with pytest.raises(ValueError, match="'mps' or a plugin 'module:OBJECT', got 'clip'"):
        build_scorer("clip", tmp_path / "x")
    with pytest.raises(ValueError, match="'os:system' is a builtin_function_or_method, not a ScorerPlugin"):
        build_scorer("os:system", tmp_path / "x")           # a config cannot name an arbitrary function
    with pytest.raises(ValueError, match="not found"):
        build_scorer("tlcm_toy.scorer:NO_SUCH", tmp_path / "x")


class RecordingScorer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def forward(self, images, prompts):
        self.seen = list(prompts)
        return images.mean(dim=(1, 2, 3)) * 100.0


def _saved_bytes(fn):
    """Bytes autograd keeps for the backward while ``fn`` runs (outside checkpoints: only their inputs)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_unit_checkpointed_decode_is_the_plain_decode_and_keeps_less():
    vae = tiny_vae().requires_grad_(False)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    weights = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = vae.decode(latents / vae.config.scaling_factor).sample
    grads, outputs, kept = [], [], []
    for checkpoint in ("none", "unit"):
        x = latents.clone().requires_grad_(True)
        images, saved = _saved_bytes(lambda: decode_latents(vae, x, checkpoint=checkpoint))
        (images * weights).sum().backward()
        grads.append(x.grad)
        outputs.append(images.detach())
        kept.append(saved)
    # the unit chain is diffusers' decode, and checkpointing it changes nothing but what is kept
    assert torch.equal(outputs[0], (reference * 0.5 + 0.5).clamp(0, 1))
    assert outputs[0].min() >= 0 and outputs[0].max() <= 1 and float(grads[0].abs().sum()) > 0
    assert torch.equal(outputs[1], outputs[0]) and torch.equal(grads[1], grads[0])
    assert kept[1] < 0.5 * kept[0], kept
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        decode_latents(vae, latents, checkpoint="sample")


def test_bf16_decode_runs_on_a_copy_and_stays_close():
    vae = tiny_vae()
    technique = PreferenceTechnique(vae, RecordingScorer(), decode_dtype=torch.bfloat16)
    assert vae.dtype == torch.float32 and technique.vae.dtype == torch.bfloat16 and technique.vae is not vae
    assert PreferenceTechnique(vae, RecordingScorer(), decode_dtype=torch.float32).vae is vae
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    images = decode_latents(technique.vae, x, checkpoint="unit")
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, decode_latents(vae, x.detach()), rtol=0, atol=0.05)
    images.sum().backward()
    assert x.grad.dtype == torch.float32 and float(x.grad.abs().sum()) > 0


def test_decode_crop_scores_one_window_drawn_from_the_generator():
    scorer = RecordingScorer()
    technique = PreferenceTechnique(tiny_vae(), scorer, decode_crop=3)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    batch = AuxBatch(None, None, ["a", "b"], x0, torch.tensor([1, 2]), x0, torch.Generator().manual_seed(5))
    (term,) = technique.terms(batch)
    rows, cols = crop_window(8, 8, 3, torch.Generator().manual_seed(5))
    x = x0.clone().requires_grad_(True)
    loss = term.loss(x)
    torch.testing.assert_close(loss, technique.loss(x0[..., rows, cols], ["a", "b"]))
    loss.backward()
    inside = torch.zeros_like(x0, dtype=torch.bool)
    inside[..., rows, cols] = True
    assert float(x.grad[inside].abs().sum()) > 0 and not x.grad[~inside].any()
    with pytest.raises(ValueError, match="decode crop 9 must be in 1..8"):
        crop_window(8, 8, 9, torch.Generator())


def test_technique_contract_and_negatives():
    scorer = RecordingScorer()
    technique = PreferenceTechnique(tiny_vae(), scorer)
    assert technique.parameters() == [] and technique.state_dict() == {} and technique.update(None) == {}
    technique.load_state_dict({})
    with pytest.raises(ValueError, match="trains nothing"):
        technique.load_state_dict({"fake": torch.zeros(1)})
    x0 = torch.randn(3, 4, 8, 8)
    batch = AuxBatch(None, None, ["a", "b", "c"], x0, torch.tensor([1, 2, 3]), x0, torch.Generator())
    (term,) = technique.terms(batch)
    assert term.name == "preference" and term.weight == 1.0     # logged as loss/preference
    assert float(term.loss(x0)) >= 0 and scorer.seen == ["a", "b", "c", "b", "c", "a"]
    # a repeated prompt is never its own negative; with no other prompt only the positive hinge is left
    assert unrelated_pairs(["a", "a", "b", "a"]) == [(0, 2), (1, 2), (2, 3), (3, 2)]
    technique.loss(x0, ["a", "a", "b"])
    assert scorer.seen == ["a", "a", "b", "b", "b", "a"]
    for prompts in (["a"], ["a", "a"]):
        x = x0[:len(prompts)].clone().requires_grad_(True)
        loss = technique.loss(x, prompts)
        assert scorer.seen == prompts
        images = decode_latents(technique.vae, x.detach())
        torch.testing.assert_close(loss, (16.0 - scorer(images, prompts)).clamp_min(0).mean())


def test_batch_of_one_draws_its_negative_from_the_prompt_pool():
    """At one sample per process (SDXL) the negative hinge stays active: the unrelated prompt comes from the
    training prompts, drawn with the training generator (same draw on resume), never the sample's own."""
    scorer = RecordingScorer()
    pool = ["a", "b", "c", "d"]
    technique = PreferenceTechnique(tiny_vae(), scorer, negative_pool=pool)
    x0 = torch.randn(1, 4, 8, 8).abs() + 1.0           # scores well above 0: the negative hinge bites
    drawn = []
    for seed in range(12):
        negatives = technique.negatives(["a"], torch.Generator().manual_seed(seed))
        assert negatives[0] in pool[1:]
        drawn.append(negatives[0])
        assert technique.negatives(["a"], torch.Generator().manual_seed(seed)) == negatives    # reproducible
    assert set(drawn) == {"b", "c", "d"}
    assert technique.negatives(["a", "b"], torch.Generator()) == ["b", "a"]        # in-batch first, no draw
    assert PreferenceTechnique(tiny_vae(), scorer).negatives(["a"], torch.Generator()) == [None]
    assert PreferenceTechnique(tiny_vae(), scorer, negative_pool=["a"]).negatives(["a"], torch.Generator()) == [None]

    batch = AuxBatch(None, None, ["a"], x0, torch.tensor([1]), x0, torch.Generator().manual_seed(0))
    (term,) = technique.terms(batch)
    loss = term.loss(x0)
    (negative,) = scorer.seen[1:]
    images = decode_latents(technique.vae, x0)
    positive_score = float(scorer(images, ["a"])[0])
    expected = max(16.0 - positive_score, 0.0) + max(positive_score, 0.0)     # the scorer ignores the text
    assert negative in pool[1:] and positive_score > 0
    assert float(loss) == pytest.approx(expected, rel=1e-6) and float(loss) > max(16.0 - positive_score, 0.0)


def test_student_lora_gets_exactly_the_one_graph_gradient(scorer):
    torch.manual_seed(0)
    unet = tiny_unet()
    add_student(unet, LoraConfig(rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for p in student_parameters(unet):
            p.add_(0.05 * torch.randn_like(p))
    unet.enable_gradient_checkpointing()
    unet.train()
    vae = tiny_vae()
    g = torch.Generator().manual_seed(3)
    cond = Conditioning(torch.randn(3, 77, CROSS_ATTENTION_DIM, generator=g),
                        torch.randn(3, TEXT_WIDTH_2, generator=g), sdxl_time_ids(64, 3))
    z, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([900, 500, 200])
    denoiser = Denoiser(unet, SCHEDULER_CONFIG, torch.device("cpu"))
    params = student_parameters(unet)

    def main_loss():
        x0 = denoiser.predict(z, t, cond)[0]
        return (x0 - target).square().mean(), x0

    def decode_plain(x0):
        return ((vae.decode(x0 / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)

    # shift the random tiny scorer and place the margin so that each hinge is active for some samples only
    rolled = PROMPTS[1:] + PROMPTS[:1]
    with torch.no_grad():
        probe = decode_plain(main_loss()[1])
        pos0, neg0 = scorer(probe, PROMPTS).sort().values, scorer(probe, rolled).sort().values
    offset = -float(neg0[:2].mean())
    margin, weight = float(pos0[1:].mean()) + offset, 32.0     # a power of 2: scaling is exact in floats

    def shifted(images, prompts):
        return scorer(images, prompts) + offset

    technique = PreferenceTechnique(vae, shifted, margin=margin, weight=weight, decode_checkpoint="unit")
    loss, x0 = main_loss()
    total, values = with_aux(loss, x0, technique.terms(AuxBatch(denoiser, cond, PROMPTS, z, t, x0, g)))
    require_student_active(unet)
    total.backward()
    got = [p.grad.clone() for p in params]
    assert all(p.grad is None for p in [*vae.parameters(), *scorer.parameters()])

    # reference: the loss written out on x0 with its graph, no checkpointing, one plain backward
    for p in params:
        p.grad = None
    loss_ref, x0_ref = main_loss()
    images = decode_plain(x0_ref)
    pos, neg = shifted(torch.cat([images, images]), PROMPTS + rolled).chunk(2)
    assert int((pos < margin).sum()) == 2 and int((neg > 0).sum()) == 2
    mps_ref = hinge_preference_loss(pos, neg, margin)
    (loss_ref + weight * mps_ref).backward()
    expected = [p.grad.clone() for p in params]
    assert values["preference"] == pytest.approx(float(mps_ref.detach()), rel=1e-5)
    scale = max(float(e.abs().max()) for e in expected)
    assert max(float((a - e).abs().max()) for a, e in zip(got, expected)) <= 1e-6 * scale

    # the preference part is a real share of the gradient
    for p in params:
        p.grad = None
    main_loss()[0].backward()
    gap = sum(float((p.grad - e).abs().sum()) for p, e in zip(params, expected))
    assert gap > 0.05 * sum(float(e.abs().sum()) for e in expected)


# --- the committed toy scorer --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    scorer = build_scorer(TOY, DEFAULT_WEIGHTS)
    assert not any(p.requires_grad for p in scorer.parameters()) and not scorer.training
    return scorer


def test_toy_prompts_parse_in_both_languages():
    for shape in range(3):
        for colour in range(4):
            for texture in range(4):
                for position in range(4):
                    ids = (shape, colour, texture, position)
                    assert parse_prompt(prompt(*ids, language="en")) == parse_prompt(prompt(*ids, language="zh")) == ids
    for bad in ("a red circle", "a red blue solid circle at the top left", "a photo of a cat"):
        with pytest.raises(ValueError, match="toy scorer"):
            parse_prompt(bad)


def test_committed_toy_scorer_ranks_fresh_images(toy):
    record = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["sha256"] == file_sha256(DEFAULT_WEIGHTS) and DEFAULT_WEIGHTS.stat().st_size <= 2 * 2 ** 20
    n = 300
    data = generate(n, 13_579)          # neither a training nor the recorded held-out stream
    clean, ids = torch.as_tensor(data.images), label_ids(data.labels)
    prompts = prompts_for(data.labels, "en")
    with torch.no_grad():
        own = toy(clean, prompts)
        assert torch.equal(own, toy(clean, prompts_for(data.labels, "zh")))
        rolled = ids.roll(1, 0)
        distinct = (rolled != ids).any(1)
        unrelated = toy.score_ids(clean, rolled)
        one_wrong = toy.score_ids(clean, change_attributes(ids, torch.ones(n, dtype=torch.long),
                                                           torch.Generator().manual_seed(0)))
        blurred = toy(degrade(clean, torch.zeros(n, dtype=torch.long), torch.full((n,), HELD_OUT_SEVERITY),
                              torch.Generator()), prompts)
        box_blurred = toy(torch.as_tensor(blur(data.images)), prompts)      # the evaluator sanity check's blur
    assert float((own > unrelated)[distinct].float().mean()) >= 0.9
    assert float((own > one_wrong).float().mean()) >= 0.9
    assert float((own > blurred).float().mean()) >= 0.9
    assert float((own > box_blurred).float().mean()) >= 0.9
    # calibration: the paper's margin s0 = 16 separates right-and-clean from everything else
    assert 16.0 <= float(own.mean()) <= 24.0 and float(unrelated[distinct].mean()) < 0.0
    assert float(one_wrong.mean()) < 8.0 and float(blurred.mean()) < 16.0


def test_toy_scorer_passes_gradients_to_the_images(toy):
    """The gradient the preference loss follows is the score's derivative: a float64 central difference of
    the scorer on the parsed attribute ids agrees (the score is too curved for float32 differences)."""
    data = generate(4, 24_680)
    prompts = prompts_for(data.labels, "zh")
    in_fp64, ids = copy.deepcopy(toy).double(), label_ids(data.labels)
    analytic, numeric = _directional_derivatives(lambda x: toy(x, prompts), torch.as_tensor(data.images), seed=13,
                                                 numeric_score=lambda x: in_fp64.score_ids(x, ids), eps=1e-5,
                                                 dtype=torch.float64)
    assert abs(numeric) > 1e-2 and analytic == pytest.approx(numeric, rel=1e-3)      # measured 5e-5 apart
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        toy(torch.rand(1, 3, 64, 64), prompts_for(data.labels, "en")[:1])


def test_toy_preference_loss_through_the_toy_vae(toy):
    """End to end with the toy world's VAE: real images' latents nearly satisfy Eq. 11 for their own
    prompts (the decoder's softness counts as clean), other images' latents are far from it."""
    vae = toy_vae()
    data = generate(8, 35_791)
    prompts = prompts_for(data.labels, "en")
    with torch.no_grad():
        latents = vae.encode(torch.as_tensor(data.images) * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    technique = PreferenceTechnique(vae, toy)
    assert float(technique.loss(latents, prompts)) < 1.0
    assert float(technique.loss(latents.roll(1, 0), prompts)) > 20.0


def test_build_preference_resolves_the_memory_options():
    from tlcm_train.config import ConfigError, MpsConfig
    from tlcm_train.stage_techniques import build_preference, preference_dtypes
    assert preference_dtypes(MpsConfig(), "cpu") == (torch.float32, torch.float32)          # auto on a CPU
    assert preference_dtypes(MpsConfig(scorer_dtype="bf16"), "cpu")[0] == torch.bfloat16
    vae = toy_vae()          # 32 px toy images: latents of side 32 // 2 ** (levels - 1)
    side = 32 // 2 ** (len(vae.config.block_out_channels) - 1)
    mps = MpsConfig(scorer=TOY, scorer_weights=str(DEFAULT_WEIGHTS), decode_dtype="bf16", decode_crop=side)
    technique = build_preference(mps, vae, side, "cpu")
    assert technique.vae.dtype == torch.bfloat16 and vae.dtype == torch.float32 and technique.decode_crop == side
    assert technique.decode_checkpoint == "unit" and next(technique.scorer.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match=f"mps.decode_crop: {side + 1} is larger than the latent side {side}"):
        build_preference(MpsConfig(scorer=TOY, scorer_weights=str(DEFAULT_WEIGHTS), decode_crop=side + 1),
                         vae, side, "cpu")


def test_half_precision_mps_scores_close_to_fp32(scorer):
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    reference = scorer(images, PROMPTS[:2])
    half = MPSScorer(copy.deepcopy(scorer.mps).to(torch.bfloat16), scorer.tokenizer)
    scores = half(images, PROMPTS[:2])
    scores.sum().backward()
    assert next(half.mps.parameters()).dtype == torch.bfloat16 and images.grad.dtype == torch.float32
    assert float(images.grad.abs().sum()) > 0
    torch.testing.assert_close(scores.float(), reference.detach(), rtol=0.05, atol=0.05)
