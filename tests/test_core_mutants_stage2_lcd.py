"""Stage 2's pair construction beyond its written-out math (tests/test_stage_targets.py runs the official
eta = 1 rollout): the deterministic rollout (eta = 0) is the DDIM jump and draws no noise, every draw comes
from the training generator, and the grids follow the model's number of train timesteps."""
import pytest
import torch

from stage_kit import prompts, smooth_denoiser
from tlcm_train.config import DistillConfig, LcdConfig
from tlcm_train.stage2_lcd import LcdStage, student_rollout


def stage(num_train_timesteps: int = 1000, eta: float = 1.0) -> LcdStage:
    return LcdStage(DistillConfig(num_segments=4), LcdConfig(rollout_eta=eta), (4, 8, 8), num_train_timesteps)


def test_deterministic_rollout_is_the_ddim_jump_and_draws_nothing():
    den, cond = smooth_denoiser(), prompts(3)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(9)
    before = g.get_state()
    got = student_rollout(den, z, [999, 749, 499, 249], cond, 0.0, g)
    assert torch.equal(g.get_state(), before)
    expected = z
    for t, t_next in zip([999, 749, 499, 249], [749, 499, 249, None]):
        x0, eps = den.predict(expected, torch.full((3,), t), cond)
        if t_next is None:
            expected = x0
            break
        a = den.alphas[t_next]
        expected = a.sqrt() * x0 + (1 - a).sqrt() * eps               # DDIM (eta 0): the model's own ε̂
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="^timesteps must not be empty$"):
        student_rollout(den, z, [], cond, 0.0, g)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_pairs_draw_only_from_the_training_generator(eta):
    den, cond = smooth_denoiser(), prompts(6)
    torch.manual_seed(1)
    first = stage(eta=eta).make_pair(den, cond, torch.Generator().manual_seed(5))
    torch.manual_seed(2)                          # a different global RNG must change nothing
    second = stage(eta=eta).make_pair(den, cond, torch.Generator().manual_seed(5))
    for name in ("z_m", "t_m", "z_n", "t_n", "rollout"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_grids_follow_the_models_train_timesteps():
    short = stage(500)
    assert short.rollout == [499, 374, 249, 124]                    # round(T - T/4·i) - 1
    assert short.grid.tolist() == [499, 374, 249, 124, 0]
    assert stage().rollout == [999, 749, 499, 249]
