"""Stage 1's pair construction beyond its written-out math (tests/test_stage_targets.py): every draw comes
from the training generator (exact resume), and the grid follows the model's number of train timesteps."""
import pytest
import torch

from stage_kit import prompts, smooth_denoiser
from tlcm_train.config import DistillConfig, MlcdConfig
from tlcm_train.stage1_mlcd import MlcdStage


def stage(num_train_timesteps: int = 1000) -> MlcdStage:
    return MlcdStage(DistillConfig(num_segments=4), MlcdConfig(), (4, 8, 8), num_train_timesteps)


def test_pairs_draw_only_from_the_training_generator():
    den, cond = smooth_denoiser(), prompts(6)
    torch.manual_seed(1)
    first = stage().make_pair(den, cond, torch.Generator().manual_seed(5))
    torch.manual_seed(2)                          # a different global RNG must change nothing
    second = stage().make_pair(den, cond, torch.Generator().manual_seed(5))
    for name in ("z_m", "t_m", "z_n", "t_n", "boundary"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    other = stage().make_pair(den, cond, torch.Generator().manual_seed(6))
    assert not torch.equal(first.z_m, other.z_m)


@pytest.mark.parametrize("num_train_timesteps, grid", [(1000, [999, 749, 499, 249, 0]), (500, [499, 374, 249, 124, 0])])
def test_grid_follows_the_models_train_timesteps(num_train_timesteps, grid):
    assert stage(num_train_timesteps).grid.tolist() == grid       # int(T-1 - (T-1)·i/4)
