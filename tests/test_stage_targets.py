"""The stage-1 (MLCD) and stage-2 (LCD) consistency pairs, targets and predictions against the paper's math
written out here by hand: plain UNet calls (the frozen base as teacher, the student as its own UNet with
W + (alpha / r) · B · A merged by hand) and plain DDIM arithmetic on SDXL's ᾱ schedule.

The trainer's numbers come from its own entry point, ``consistency_step`` (a recording distance sees the
prediction and the stop-gradient target). The only thing taken from the trainer is its random draws: the
noise (recorded as it is drawn) and t_m (checked to be a legal draw); segment, boundary, t_n, teacher path,
guidance and the output maps are all recomputed here, so a one-line slip in any of them fails:
CFG off (w = 1), the wrong segment boundary, eps/x0 swapped, the wrong MDS step count, the student as teacher.
"""
from __future__ import annotations

import math

import pytest
import torch

from tlcm.testing.tiny import CROSS_ATTENTION_DIM, SCHEDULER_CONFIG, TEXT_WIDTH_2, tiny_unet
from tlcm_train import stage1_mlcd, stage2_lcd
from tlcm_train.adapters import add_student, student_parameters, student_state_dict
from tlcm_train.config import DistillConfig, LcdConfig, LoraConfig, MlcdConfig
from tlcm_train.consistency import consistency_step
from tlcm_train.diffusion import Conditioning, Denoiser, sdxl_time_ids

pytestmark = pytest.mark.usefixtures("one_thread")

W = 8.0                      # the teacher's CFG scale (TLCM: 8)
M = 4                        # segments: grid 999, 749, 499, 249, 0
GRID = [999, 749, 499, 249, 0]
SKIP = 20                    # stage 1: t_n = t_m - 20
P = 3                        # stage 2: teacher steps over one segment
ROLLOUT = [999, 749, 499, 249]   # stage 2: the student's 4-step uniform rollout
RANK, ALPHA = 4, 2.0         # alpha != rank: a wrong LoRA scale changes the student
SHAPE = (4, 8, 8)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"]

# SDXL's scaled_linear schedule: β_t = (√0.00085 + (√0.012 − √0.00085) t / 999)², ᾱ_t = Π (1 − β)
_BETAS = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * t / 999) ** 2 for t in range(1000)]
ABAR = [math.prod(1 - b for b in _BETAS[: t + 1]) for t in range(1000)]


# ---- the hand-written math -------------------------------------------------------------------------------
class Hand:
    """The paper's operations on single samples: ε-prediction UNets, CFG with a zero uncond, DDIM moves."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, cond: Conditioning):
        self.teacher, self.student_unet, self.cond = teacher, student, cond

    def eps(self, unet, z, t: int, i: int, uncond: bool = False) -> torch.Tensor:
        embeds, pooled = self.cond.embeds[i:i + 1], self.cond.pooled[i:i + 1]
        if uncond:
            embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        with torch.no_grad():
            return unet(z, torch.tensor([t]), encoder_hidden_states=embeds,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": self.cond.time_ids[i:i + 1]}).sample

    def teacher_eps(self, z, t, i):          # ε̂ = ε(∅) + w (ε(c) − ε(∅))
        e_u = self.eps(self.teacher, z, t, i, uncond=True)
        return e_u + W * (self.eps(self.teacher, z, t, i) - e_u)

    @staticmethod
    def x0(z, t, eps):                       # z = √ᾱ x0 + √(1 − ᾱ) ε
        return (z - math.sqrt(1 - ABAR[t]) * eps) / math.sqrt(ABAR[t])

    @staticmethod
    def to(x0, eps, abar):                   # deterministic DDIM point at ᾱ
        return math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps

    def teacher_path(self, z, ts: list[int], i: int) -> torch.Tensor:
        for t, t_next in zip(ts, ts[1:]):
            e = self.teacher_eps(z, t, i)
            z = self.to(self.x0(z, t, e), e, ABAR[t_next])
        return z

    def student(self, z, t, i) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.eps(self.student_unet, z, t, i)
        return self.x0(z, t, e), e


def even(t_from: int, t_to: int, steps: int) -> list[int]:
    """``steps`` equal teacher steps (timesteps rounded to integers)."""
    return [round(t_from + (t_to - t_from) * j / steps) for j in range(steps + 1)]


# ---- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    """The trainer's UNet (frozen base + a non-zero student LoRA) and, separately, the plain base and the
    student merged by hand: W + (alpha / r) · B · A."""
    unet = tiny_unet()
    add_student(unet, LoraConfig(rank=RANK, alpha=ALPHA, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in student_parameters(unet):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    den = Denoiser(unet, SCHEDULER_CONFIG, torch.device("cpu"))
    teacher, student = tiny_unet(), tiny_unet()
    lora = student_state_dict(unet)
    weights = student.state_dict()
    with torch.no_grad():
        for key, a in lora.items():
            if key.endswith(".lora_A.weight"):
                name = key[: -len(".lora_A.weight")]
                b = lora[f"{name}.lora_B.weight"]
                w = weights[f"{name}.weight"]
                w += (ALPHA / RANK) * (b.flatten(1) @ a.flatten(1)).view_as(w)
    return den, teacher, student


@pytest.fixture(scope="module")
def cond():
    g = torch.Generator().manual_seed(11)
    return Conditioning(torch.randn(6, 77, CROSS_ATTENTION_DIM, generator=g),
                        torch.randn(6, TEXT_WIDTH_2, generator=g), sdxl_time_ids(64, 6))


def run_trainer(stage, module, den, cond, seed, monkeypatch):
    """The trainer's step with a recording distance; returns (pair, prediction, target, drawn noises)."""
    drawn, seen = [], {}
    draw = module.randn

    def recording_randn(*args, **kwargs):
        drawn.append(draw(*args, **kwargs))
        return drawn[-1]

    def recording_distance(prediction, target):
        seen.update(prediction=prediction.detach(), target=target)
        return (prediction - target).square().mean()

    monkeypatch.setattr(module, "randn", recording_randn)
    _, pair, _ = consistency_step(stage, den, cond, recording_distance, torch.Generator().manual_seed(seed))
    return pair, seen["prediction"], seen["target"], drawn


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=2e-4, atol=2e-4, msg=lambda m: f"{what}\n{m}")


# ---- the tests ---------------------------------------------------------------------------------------------
def test_stage1_mlcd_pair_target_and_prediction_follow_the_written_out_math(models, cond, monkeypatch):
    den, teacher, student = models
    stage = stage1_mlcd.MlcdStage(DistillConfig(num_segments=M, guidance_scale=W), MlcdConfig(skip=SKIP), SHAPE)
    pair, prediction, target, drawn = run_trainer(stage, stage1_mlcd, den, cond, 4, monkeypatch)
    assert len(drawn) == 1, "stage 1 is data-free: one pure-noise draw z_T per batch"
    z_T = drawn[0]
    hand = Hand(teacher, student, cond)
    segments = []
    for i, t_m in enumerate(pair.t_m.tolist()):
        # the segment k whose open interval holds t_m with room for the skip: grid[k+1] + skip <= t_m <= grid[k]
        ks = [k for k in range(M) if GRID[k + 1] + SKIP <= t_m <= GRID[k]]
        assert len(ks) == 1, f"t_m = {t_m} is not a legal stage-1 draw"
        k = ks[0]
        segments.append(k)
        boundary, t_n = GRID[k + 1], t_m - SKIP
        # MDS: from pure noise at 999, L = k + 1 equal CFG-DDIM steps down to t_m, then one more to t_n
        z_m = hand.teacher_path(z_T[i:i + 1], even(999, t_m, k + 1), i)
        z_n = hand.teacher_path(z_m, [t_m, t_n], i)
        close(pair.z_m[i:i + 1], z_m, f"sample {i}: z_tm (segment {k}, t_m {t_m})")
        close(pair.z_n[i:i + 1], z_n, f"sample {i}: z_tn (t_n {t_n})")
        assert int(pair.t_n[i]) == t_n and int(pair.boundary[i]) == boundary
        # g_θ: the student's DDIM jump to the segment's lower boundary; at boundary 0 the clean x̂0 (ᾱ := 1)
        abar_b = 1.0 if boundary == 0 else ABAR[boundary]
        close(target[i:i + 1], hand.to(*hand.student(z_n, t_n, i), abar_b), f"sample {i}: target g(z_tn)")
        close(prediction[i:i + 1], hand.to(*hand.student(z_m, t_m, i), abar_b), f"sample {i}: prediction g(z_tm)")
    assert {0, M - 1} <= set(segments), f"the draw must cover the top and the last segment, got {segments}"


def test_stage2_lcd_pair_target_and_prediction_follow_the_written_out_math(models, cond, monkeypatch):
    den, teacher, student = models
    stage = stage2_lcd.LcdStage(DistillConfig(num_segments=M, guidance_scale=W),
                                LcdConfig(student_steps=len(ROLLOUT), teacher_steps=P, rollout_eta=1.0), SHAPE)
    pair, prediction, target, drawn = run_trainer(stage, stage2_lcd, den, cond, 2, monkeypatch)
    assert len(drawn) == 1 + (len(ROLLOUT) - 1) + 1, "z_T, one fresh noise per rollout step, the forward noise"
    z_T, rollout_noise, forward_noise = drawn[0], drawn[1:-1], drawn[-1]
    hand = Hand(teacher, student, cond)
    segments = []
    for i, t_m in enumerate(pair.t_m.tolist()):
        # ẑ0: the student's own 4-step rollout from pure noise, x̂0 re-noised with fresh noise (η = 1)
        z = z_T[i:i + 1]
        for j, t in enumerate(ROLLOUT):
            x0, _ = hand.student(z, t, i)
            if j < len(ROLLOUT) - 1:
                z = hand.to(x0, rollout_noise[j][i:i + 1], ABAR[ROLLOUT[j + 1]])
        close(pair.rollout[i:i + 1], x0, f"sample {i}: student rollout ẑ0")
        assert t_m in GRID[:M], f"t_m = {t_m} is not a milestone"
        k = GRID.index(t_m)
        segments.append(k)
        t_n = GRID[k + 1]
        # Eq. 9: forward-diffuse ẑ0 to t_m; then p = 3 equal CFG-DDIM teacher steps over the segment
        z_m = hand.to(x0, forward_noise[i:i + 1], ABAR[t_m])
        z_n = hand.teacher_path(z_m, even(t_m, t_n, P), i)
        close(pair.z_m[i:i + 1], z_m, f"sample {i}: ẑ_tm (t_m {t_m})")
        close(pair.z_n[i:i + 1], z_n, f"sample {i}: ẑ_tn (t_n {t_n})")
        assert int(pair.t_n[i]) == t_n
        # f_θ = x̂0 (Eq. 10) at both ends
        close(target[i:i + 1], hand.student(z_n, t_n, i)[0], f"sample {i}: target x̂0(ẑ_tn)")
        close(prediction[i:i + 1], hand.student(z_m, t_m, i)[0], f"sample {i}: prediction x̂0(ẑ_tm)")
    assert {0, M - 1} <= set(segments), f"the draw must cover the top and the last segment, got {segments}"
