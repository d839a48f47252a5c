"""What the techniques that train something of their own share: the optimizer step with a gradient-sync
hook, and an exact, validated state for resume (docs/trainer.md §6-7)."""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

Sync = Callable[[list[torch.nn.Parameter]], None]
"""Averages the given parameters' gradients across processes in place (e.g. ``tlcm_train.loop.average_gradients``)."""


def optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, sync: Sync | None) -> None:
    """Sync gradients (multi-process), step, and drop the gradients so none leak into the next backward."""
    if sync is not None:
        sync(params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trainable_state(owner: str, named: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Weights (CPU copies) and a deep copy of the optimizer state, tagged with their owner: a later step
    must not mutate a state already handed out."""
    return {"owner": owner,
            "weights": {k: p.detach().to("cpu", copy=True) for k, p in named.items()},
            "optimizer": copy.deepcopy(optimizer.state_dict())}


def load_trainable_state(owner: str, named: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Restore :func:`trainable_state` output in place, refusing another owner's or a differently shaped one."""
    if not isinstance(state, dict) or state.get("owner") != owner:
        found = state.get("owner") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a {owner!r} state (found {found!r})")
    weights = state["weights"]
    missing, extra = sorted(set(named) - set(weights)), sorted(set(weights) - set(named))
    wrong = sorted(k for k in set(named) & set(weights) if tuple(weights[k].shape) != tuple(named[k].shape))
    if missing or extra or wrong:
        raise ValueError(f"saved {owner!r} state does not fit (different rank, targets or model?): "
                         f"missing {missing[:3]}, unexpected {extra[:3]}, shape mismatch {wrong[:3]} "
                         f"({len(missing)} / {len(extra)} / {len(wrong)})")
    optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(weights[k])
