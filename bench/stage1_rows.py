"""UNet rows per stage-1 (MLCD) step: the teacher's CFG solver running only the samples still moving,
against running the whole batch at every solver step (the padded paths of ``even_path``).

Counts the rows the real ``MlcdStage.make_pair`` hands the UNet (a stand-in denoiser counts them and
returns zeros: the count depends only on the sampled segments, not on the network), and, from the same
draws, the rows a whole-batch solver would run. CFG doubles both (cond + uncond).

    python bench/stage1_rows.py --batch 32 --draws 200      # prints the Markdown table
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlcm_train.config import load_config  # noqa: E402
from tlcm_train.diffusion import Conditioning, Denoiser  # noqa: E402
from tlcm_train.stage1_mlcd import MlcdStage  # noqa: E402
from tlcm_train.teacher import even_path  # noqa: E402

SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon")


class CountingUNet(torch.nn.Module):
    """Returns zeros and counts the rows of each call (``teacher_mode`` needs PEFT's adapter switches)."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.rows = 0

    def forward(self, z, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        self.rows += z.shape[0]
        return (torch.zeros_like(z),)

    def disable_adapters(self):
        pass

    def enable_adapters(self):
        pass

    def set_adapter(self, name):
        pass


def whole_batch_rows(k: torch.Tensor, num_segments: int) -> int:
    """Rows of a solver that runs the whole batch at every step where any sample still moves (CFG: x2)."""
    grid_top = torch.full_like(k, 999)
    path = even_path(grid_top, grid_top - 1 - k, k + 1, num_segments)        # only which steps move matters
    steps = int((path[:, 1:] != path[:, :-1]).any(dim=0).sum())
    return 2 * len(k) * (steps + 1)                                         # + the final t_m -> t_n step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--segments", type=int, default=8)
    args = parser.parse_args(argv)
    config = load_config(None, ["model.path=x", "data.prompts=[x]", f"distill.num_segments={args.segments}",
                                "mps.steps=0", "dm.steps=0"])
    stage = MlcdStage(config.distill, config.mlcd, (4, 4, 4))
    unet = CountingUNet()
    denoiser = Denoiser(unet, SDXL_SCHEDULER, torch.device("cpu"))
    cond = Conditioning(torch.zeros(args.batch, 77, 8), torch.zeros(args.batch, 8), torch.zeros(args.batch, 6))
    generator = torch.Generator().manual_seed(0)
    moving, whole = [], []
    for _ in range(args.draws):
        state = generator.get_state()
        unet.rows = 0
        stage.make_pair(denoiser, cond, generator)
        moving.append(unet.rows)
        replay = torch.Generator()
        replay.set_state(state)
        u = torch.rand(args.batch, generator=replay, dtype=torch.float64)      # the stage's segment draw
        k = torch.floor(u * args.segments).long()
        whole.append(whole_batch_rows(k, args.segments))
    saved = [1 - m / w for m, w in zip(moving, whole)]
    print(f"MLCD, batch {args.batch}, M = {args.segments}, {args.draws} steps (training generator seed 0): UNet rows "
          "per step (cond + uncond)\n")
    print("| solver | mean | sd (ddof=1) | min | max |\n|---|---:|---:|---:|---:|")
    for name, rows in (("whole batch at every step", whole), ("moving samples only", moving)):
        print(f"| {name} | {statistics.mean(rows):.1f} | {statistics.stdev(rows):.1f} | {min(rows)} | {max(rows)} |")
    print(f"\nRows saved per step: {100 * statistics.mean(saved):.1f}% (sd {100 * statistics.stdev(saved):.1f}%).")


if __name__ == "__main__":
    main()
