"""The frozen toy evaluator: one small CNN with a classification head per attribute.

It is trained on real procedural images only and is **never** a training signal (a rewarded metric stops
measuring, docs/eval.md §5). Architecture and seed differ from everything in the teacher/trainer: plain
strided convolutions with batch norm, no attention, no diffusers blocks. Its penultimate 128-d features
feed FD and KID; its heads give per-attribute and all-attribute accuracy.

Reproduce the committed weights: ``python -m tlcm_toy.evaluator --out tlcm_toy/weights/evaluator.safetensors``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import ATTRIBUTES, generate

FEATURES = 128
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "evaluator.safetensors"
EVAL_SEED = 1234            # training stream seed; held-out sets use other seeds (see HELD_OUT_SEED)
HELD_OUT_SEED = 987_654


class Evaluator(nn.Module):
    """Images in [0, 1], (N, 3, 32, 32) -> penultimate features and one logit vector per attribute."""

    def __init__(self) -> None:
        super().__init__()
        def block(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.trunk = nn.Sequential(*block(3, 24, 4, 2), *block(24, 48, 3, 1), *block(48, 64, 3, 2),
                                   *block(64, 64, 3, 2), nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURES), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, len(values)) for name, values in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.trunk(images * 2.0 - 1.0)
        return features, {name: head(features) for name, head in self.heads.items()}


@torch.no_grad()
def evaluate_images(model: Evaluator, images: np.ndarray | torch.Tensor, batch: int = 500
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(features, predicted label per attribute) for images in [0, 1]."""
    feats, preds = [], {name: [] for name in ATTRIBUTES}
    images = torch.as_tensor(images, dtype=torch.float32)
    for i in range(0, len(images), batch):
        f, logits = model(images[i:i + batch])
        feats.append(f.numpy())
        for name, lg in logits.items():
            preds[name].append(lg.argmax(1).numpy())
    return np.concatenate(feats), {name: np.concatenate(p) for name, p in preds.items()}


def train_evaluator(steps: int, batch: int, seed: int, lr: float = 2e-3, log=print) -> Evaluator:
    """Fresh real images every step (no image repeats, so no overfitting to a finite split)."""
    torch.manual_seed(seed)
    model = Evaluator()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        data = generate(batch, seed * 7_919 + step)
        _, logits = model(torch.as_tensor(data.images))
        loss = sum(nn.functional.cross_entropy(lg, torch.as_tensor(data.labels[name]))
                   for name, lg in logits.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"evaluator step {step} loss {loss.item():.4f}", flush=True)
    return model.eval()


def load_evaluator(path: str | Path = DEFAULT_WEIGHTS) -> Evaluator:
    from safetensors.torch import load_file
    model = Evaluator()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    from .metrics import attribute_accuracy
    parser = argparse.ArgumentParser(description="Train the frozen toy evaluator on real procedural images.")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"weights file (the committed one: {DEFAULT_WEIGHTS.relative_to(DEFAULT_WEIGHTS.parents[2])})")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--held-out", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = train_evaluator(args.steps, args.batch, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    held_out = generate(args.held_out, HELD_OUT_SEED)
    _, predicted = evaluate_images(load_evaluator(args.out), held_out.images)
    record = dict(held_out_n=args.held_out, held_out_seed=HELD_OUT_SEED, steps=args.steps, batch=args.batch,
                  seed=args.seed, sha256=file_sha256(args.out),
                  accuracy=attribute_accuracy(predicted, held_out.labels))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
