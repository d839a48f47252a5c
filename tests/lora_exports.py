"""Independent checks of an exported LoRA's scale: what each host's own loader adds to a base weight must be
exactly (alpha / r) · B · A of the trained student, computed here by hand from the student's PEFT tensors.

- kohya: the ``.alpha`` keys are read and the formula applied here (ComfyUI / A1111 do the same);
- diffusers: diffusers' own ``load_lora_weights`` on a pipeline, fused, then unloaded;
- PEFT: ``PeftModel.from_pretrained`` + ``merge_and_unload`` (peft's own loading).

Used with alpha != rank, so an export that writes alpha = rank (or drops the scale) is off by r / alpha.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


def write_official_peft(folder: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
                        alpha: float, target_modules: tuple[str, ...]) -> Path:
    """The official TLCM release layout, written out: ``adapter_model.safetensors`` with
    ``base_model.model.<diffusers path>.lora_A/B.weight`` (A, B per module) and ``adapter_config.json``
    holding r, lora_alpha and the target list."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"base_model.model.{n}.lora_{ab}.weight": t.contiguous() for n, (a, b) in factors.items()
               for ab, t in (("A", a), ("B", b))}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(target_modules)}))
    return folder


def hand_deltas(student: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """{module path: (alpha / r) · B · A} (float64, flattened to (out, in·kh·kw)) from a PEFT state dict
    (``<module>.lora_A.weight`` = A: (r, in[, kh, kw]); ``lora_B`` = B: (out, r[, 1, 1]))."""
    out = {}
    for key, a in student.items():
        if key.endswith(A_SUFFIX):
            name = key[: -len(A_SUFFIX)]
            b = student[name + B_SUFFIX]
            rank = a.shape[0]
            out[name] = (alpha / rank) * (b.double().flatten(1) @ a.double().flatten(1))
    assert out, "no LoRA modules in the student state"
    return out


def peft_folder_state(folder: Path) -> dict[str, torch.Tensor]:
    """A PEFT adapter folder's raw A/B tensors, keyed like ``tlcm_train.adapters.student_state_dict``."""
    state = load_file(str(Path(folder) / "adapter_model.safetensors"))
    return {k.removeprefix("base_model.model."): v for k, v in state.items()}


def kohya_deltas(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """What a kohya host adds per module: (.alpha / rank) · up · down, read straight from the file."""
    state = load_file(str(path))
    keys = {name: "lora_unet_" + name.replace(".", "_") for name in names}
    assert set(state) == {f"{k}.{part}" for k in keys.values() for part in ("alpha", "lora_down.weight",
                                                                              "lora_up.weight")}, path
    out = {}
    for name, key in keys.items():
        down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
        out[name] = (float(state[f"{key}.alpha"]) / down.shape[0]) * (up.double().flatten(1) @ down.double().flatten(1))
    return out


def merged_deltas(base: dict[str, torch.Tensor], merged: dict[str, torch.Tensor],
                  names: list[str]) -> dict[str, torch.Tensor]:
    """Per-module weight change of a merged model; every other tensor must be untouched."""
    assert merged.keys() == base.keys(), sorted(set(merged) ^ set(base))[:5]
    weights = {f"{n}.weight" for n in names}
    changed = [k for k in base if k not in weights and not torch.equal(base[k], merged[k])]
    assert not changed, f"the loader changed tensors outside the LoRA's modules: {changed[:3]}"
    return {n: (merged[f"{n}.weight"].double() - base[f"{n}.weight"].double()).flatten(1) for n in names}


def peft_deltas(base_unet: torch.nn.Module, folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """PEFT's own loading of the adapter folder (its adapter_config.json decides r and lora_alpha)."""
    from peft import PeftModel
    merged = PeftModel.from_pretrained(copy.deepcopy(base_unet), str(folder)).merge_and_unload()
    return merged_deltas(base_unet.state_dict(), merged.state_dict(), names)


def diffusers_deltas(pipe, path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """diffusers' own ``load_lora_weights`` on ``pipe`` (fused into the UNet, then unloaded; mutates ``pipe``)."""
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()
    pipe.unload_lora_weights()            # keeps the fused weights, removes the LoRA layers
    return merged_deltas(base, pipe.unet.state_dict(), names)


def assert_deltas(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """Every module's applied delta equals the hand-computed one (a wrong scale is off by a factor)."""
    assert got.keys() == expected.keys(), f"{what}: modules differ: {sorted(set(got) ^ set(expected))[:3]}"
    biggest = max(float(d.abs().max()) for d in expected.values())
    assert biggest > 1e-4, f"{what}: the student's LoRA is ~0, so a wrong scale would go unnoticed"
    for name, delta in expected.items():
        ratio = float((got[name] * delta).sum() / (delta * delta).sum().clamp_min(1e-30))
        torch.testing.assert_close(got[name], delta, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{what}: {name}: applied / expected scale {ratio:.4f}\n{m}")
