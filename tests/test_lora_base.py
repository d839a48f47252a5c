"""The base-model record in LoRA files: written by every format, read back, kept by conversion, and a
LoRA applied to another kind of model is a one-line warning naming both kinds."""
from __future__ import annotations

import pytest
import torch

from tlcm.generate import apply_loras
from tlcm.lora import BaseKind, LoraFile, LoraModule, base_mismatch, load_lora, save_lora
from tlcm.cli import main as tlcm_cli

VPRED_ZSNR = BaseKind("v_prediction", zero_terminal_snr=True)


def small_lora(base: BaseKind | None) -> LoraFile:
    g = torch.Generator().manual_seed(0)
    modules = {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q":
               LoraModule(torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 3.0)}
    return LoraFile(modules, "peft", base=base)


@pytest.mark.parametrize("fmt, name", [("kohya", "a.safetensors"), ("diffusers", "a.safetensors"), ("peft", "a")])
def test_every_format_records_the_base_and_reads_it_back(tmp_path, fmt, name):
    path = save_lora(small_lora(VPRED_ZSNR), tmp_path / name, fmt)
    loaded = load_lora(path)
    assert loaded.base == VPRED_ZSNR
    assert any("v_prediction with zero terminal SNR" in note for note in loaded.notes)
    assert load_lora(save_lora(small_lora(None), tmp_path / f"plain-{name}", fmt)).base is None


def test_conversion_keeps_the_record(tmp_path):
    source = save_lora(small_lora(BaseKind("epsilon")), tmp_path / "in.safetensors", "diffusers")
    assert tlcm_cli(["lora", "convert", str(source), str(tmp_path / "out.safetensors"), "--to", "kohya"]) == 0
    assert load_lora(tmp_path / "out.safetensors").base == BaseKind("epsilon", zero_terminal_snr=False)


def test_mismatch_names_both_kinds_and_only_a_real_mismatch_warns():
    warning = base_mismatch(VPRED_ZSNR, BaseKind("epsilon"), "mine.safetensors")
    assert warning.startswith("mine.safetensors was distilled from a v_prediction with zero terminal SNR model, "
                              "but this model is epsilon:")
    assert "zero terminal SNR" in base_mismatch(BaseKind("v_prediction"), VPRED_ZSNR, "x")   # schedule alone differs
    assert base_mismatch(VPRED_ZSNR, VPRED_ZSNR, "x") is None
    assert base_mismatch(None, VPRED_ZSNR, "x") is None            # no record (official weights): not judged


def test_generate_warns_before_merging_a_lora_of_another_kind(tiny_pipe, tmp_path, capsys):
    lora = small_lora(VPRED_ZSNR)
    name = next(iter(lora.modules))
    weight = tiny_pipe.unet.get_submodule(name).weight
    lora.modules[name] = LoraModule(torch.zeros(2, weight.shape[1]), torch.zeros(weight.shape[0], 2), 3.0)
    path = save_lora(lora, tmp_path / "vpred.safetensors", "kohya")
    apply_loras(tiny_pipe, [(str(path), 1.0)])
    err = capsys.readouterr().err
    assert "[tlcm] warning: vpred.safetensors was distilled from a v_prediction with zero terminal SNR model, " \
           "but this model is epsilon" in err
