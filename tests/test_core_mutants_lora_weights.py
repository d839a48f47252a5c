"""Tests that kill mutants of ``tlcm/lora/weights.py`` the older tests let live (bench/results/mutation.md).

Every expectation is written out, never computed by ``tlcm``.
"""
import pytest
import torch

from tlcm.lora import LoraFile, LoraModule


def module(rank: int, width: int, alpha: float, conv: bool = False) -> LoraModule:
    if conv:
        return LoraModule(torch.zeros(rank, width, 3, 3), torch.zeros(5, rank, 1, 1), alpha)
    return LoraModule(torch.zeros(rank, width), torch.zeros(5, rank), alpha)


@pytest.mark.parametrize("down, up, message", [
    ((2, 3), (4, 2, 1, 1), "LoRA down/up must both be 2-D (Linear) or 4-D (Conv2d); got shapes (2, 3) and (4, 2, 1, 1)"),
    ((2, 3, 1, 1), (4, 2), "LoRA down/up must both be 2-D (Linear) or 4-D (Conv2d); got shapes (2, 3, 1, 1) and (4, 2)"),
    ((2, 3, 1, 1), (4, 2, 3, 3), "LoRA up (4, 2, 3, 3) does not fit down (2, 3, 1, 1): up must be (out, rank[, 1, 1]) "
                                 "and down (rank, in[, kh, kw])"),
    ((2, 0), (4, 2), "LoRA down (2, 0) / up (4, 2) are empty (rank or width 0)"),
    ((2, 3), (0, 2), "LoRA down (2, 3) / up (0, 2) are empty (rank or width 0)"),
])
def test_bad_shapes_are_refused_with_the_shapes_named(down, up, message):
    with pytest.raises(ValueError) as err:
        LoraModule(torch.zeros(down), torch.zeros(up), 1.0)
    assert str(err.value) == message


def test_non_finite_alpha_message():
    with pytest.raises(ValueError) as err:
        LoraModule(torch.zeros(2, 3), torch.zeros(4, 2), float("nan"))
    assert str(err.value) == "LoRA alpha must be a finite number, got nan"


def test_summary_of_a_mixed_file():
    lora = LoraFile({"a": module(2, 3, 2.0), "b": module(4, 3, 8.0), "c": module(4, 3, 4.0, conv=True)}, "kohya",
                    notes=["alpha from the file"], skipped=["lora_te1_x", "lora_te2_y"])
    assert lora.summary() == "\n".join([
        "format: kohya",
        "modules: 3 (1 conv, 2 linear)",
        "rank: 2..4 (2 values)",
        "alpha: 2..8 (3 values)",
        "scale: 1..2 (2 values)",                  # 2/2, 8/4, 4/4
        "dtype: float32",
        "not applicable to the UNet: 2 keys (e.g. lora_te1_x)",
        "note: alpha from the file",
    ])


def test_summary_of_a_uniform_file():
    lora = LoraFile({"a": module(4, 3, 4.0), "b": module(4, 3, 4.0)}, "peft")
    assert lora.summary() == "format: peft\nmodules: 2 (0 conv, 2 linear)\nrank: 4\nalpha: 4\nscale: 1\ndtype: float32"
