"""TLCM LoRA file handling without PEFT: the delta maths, key layouts, name resolution, errors, CLI."""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tlcm.lora import (LoraFile, LoraMatchError, LoraModule, load_lora, match_lora, merge_lora, resolve_names,
                       save_lora, sdxl_unet_module_names, tlcm_target_modules, to_diffusers_state_dict,
                       to_kohya_state_dict, to_peft)
from tlcm.cli import main
from tlcm.lora.cli import add_parser
from tlcm.testing.tiny import tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0)


def random_lora(unet, rank=2, alpha=3.0, dtype=torch.float32, seed=0) -> LoraFile:
    """A LoRA on every TLCM target of ``unet``, shaped from the module weights."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for name in tlcm_target_modules(unet):
        weight = unet.get_submodule(name).weight
        down = torch.randn((rank, *weight.shape[1:]), generator=gen)
        up = torch.randn((weight.shape[0], rank, *(1,) * (weight.ndim - 2)), generator=gen)
        modules[name] = LoraModule(down.to(dtype), up.to(dtype), alpha)
    return LoraFile(modules, "test")


@pytest.fixture(scope="module")
def lora(unet):
    return random_lora(unet)


def assert_same_modules(actual: LoraFile, expected: LoraFile):
    assert actual.modules.keys() == expected.modules.keys()
    for name, mod in expected.modules.items():
        torch.testing.assert_close(actual.modules[name].delta(), mod.delta(), msg=name)


def test_delta_equals_applying_down_then_up(unet, lora):
    """The merged delta must act like the LoRA's two layers, for convs (incl. stride 2) and linears."""
    gen = torch.Generator().manual_seed(1)
    convs = [n for n in lora.modules if isinstance(unet.get_submodule(n), torch.nn.Conv2d)]
    stride2 = [n for n in convs if unet.get_submodule(n).stride == (2, 2)]
    for name in (convs[0], stride2[0]):
        conv, mod = unet.get_submodule(name), lora.modules[name]
        x = torch.randn(1, conv.in_channels, 8, 8, generator=gen)
        two_layers = F.conv2d(F.conv2d(x, mod.down, stride=conv.stride, padding=conv.padding), mod.up) * mod.scale
        torch.testing.assert_close(F.conv2d(x, mod.delta(), stride=conv.stride, padding=conv.padding), two_layers,
                                   rtol=1e-4, atol=1e-4)
    mod = lora.modules[next(n for n in lora.modules if n not in convs)]
    x = torch.randn(3, mod.down.shape[1], generator=gen)
    torch.testing.assert_close(x @ mod.delta().T, (x @ mod.down.T @ mod.up.T) * mod.scale, rtol=1e-4, atol=1e-4)


def test_merge_adds_the_delta_to_every_target(unet, lora):
    model = copy.deepcopy(unet)
    report = merge_lora(model, lora, strength=0.7)
    assert report.coverage == 1.0 and len(report.matched) == len(tlcm_target_modules(unet))
    for name, mod in lora.modules.items():
        if mod.down.ndim == 4:
            product = torch.einsum("or,rikl->oikl", mod.up[:, :, 0, 0], mod.down)
        else:
            product = torch.einsum("or,ri->oi", mod.up, mod.down)
        expected = unet.get_submodule(name).weight + 0.7 * mod.scale * product
        torch.testing.assert_close(model.get_submodule(name).weight, expected, rtol=1e-5, atol=1e-5, msg=name)


def test_kohya_names_resolve_against_the_model_or_sdxl(unet, lora, tmp_path):
    path = save_lora(lora, tmp_path / "k.safetensors", "kohya")
    kohya = load_lora(path)
    assert kohya.source_format == "kohya" and not kohya.names_resolved
    assert set(kohya.modules) == {n.replace(".", "_") for n in lora.modules}
    report = match_lora(kohya, unet)
    assert set(report.matched.values()) == set(lora.modules) and report.coverage == 1.0
    assert set(match_lora(kohya, sdxl_unet_module_names()).matched.values()) == set(lora.modules)
    assert_same_modules(resolve_names(kohya, sdxl_unet_module_names()), lora)
    # kohya -> PEFT needs module paths, found without any model at hand (SDXL's names on the meta device)
    assert_same_modules(load_lora(save_lora(kohya, tmp_path / "peft", "peft")), lora)


def test_kohya_sgm_names_resolve_like_diffusers_names(unet, lora, tmp_path):
    """sd-scripts' SDXL LoRAs name modules the SGM way (``input_blocks_4_1_...``): same modules, same merge."""
    from tlcm.sgm_names import unet_module_sgm_name
    renamed = {}
    for key, tensor in to_kohya_state_dict(lora).items():
        flat, _, suffix = key.removeprefix("lora_unet_").partition(".")
        name = next(n for n in lora.modules if n.replace(".", "_") == flat)
        renamed[f"lora_unet_{unet_module_sgm_name(name).replace('.', '_')}.{suffix}"] = tensor
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.") for k in renamed)
    save_file(renamed, str(tmp_path / "sgm.safetensors"))
    sgm = load_lora(tmp_path / "sgm.safetensors")
    report = match_lora(sgm, unet)
    assert set(report.matched.values()) == set(lora.modules) and report.coverage == 1.0
    assert_same_modules(resolve_names(sgm, sdxl_unet_module_names()), lora)


def test_sdxl_module_names_contain_the_tiny_kit(unet):
    sdxl = set(sdxl_unet_module_names())
    tiny = {name for name, mod in unet.named_modules() if isinstance(getattr(mod, "weight", None), torch.Tensor)}
    assert tiny <= sdxl and len(sdxl) > len(tiny)


def test_sdxl_module_names_are_those_of_diffusers_sdxl_unet():
    """The structural derivation against diffusers' own SDXL UNet, built on the meta device."""
    from diffusers import UNet2DConditionModel
    from tlcm.lora.targets import SDXL_UNET_STRUCTURE
    with torch.device("meta"):
        reference = UNet2DConditionModel(**SDXL_UNET_STRUCTURE)
    weighted = [name for name, mod in reference.named_modules()
                if isinstance(getattr(mod, "weight", None), torch.Tensor)]
    names = sdxl_unet_module_names()
    assert len(names) == len(set(names)) == 1050
    assert set(names) == set(weighted)
    assert sum(n.endswith("conv_shortcut") for n in names) == 2 + 9


def test_other_unet_key_layouts(lora, tmp_path):
    diffusers = to_diffusers_state_dict(lora)
    processor = {}
    for key, value in diffusers.items():           # the old attention-processor naming of diffusers
        for proj, legacy in (("to_q", "to_q"), ("to_out.0", "to_out")):
            marker = f".attn1.{proj}.lora."
            if marker in key:
                key = key.replace(marker, f".attn1.processor.{legacy}_lora.")
        processor[key] = value
    assert any(".processor.to_out_lora.up.weight" in k for k in processor)
    peft_ab = {k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v for k, v in diffusers.items()}
    bare = {k.removeprefix("unet."): v for k, v in peft_ab.items()}
    with_alpha = {k.replace("base_model.model.", "unet."): v for k, v in to_peft(lora)[1].items()}   # unscaled up
    with_alpha.update({f"unet.{n}.alpha": torch.tensor(m.alpha) for n, m in lora.modules.items()})
    cases = (("proc", processor, "diffusers"), ("ab", peft_ab, "diffusers"), ("bare", bare, "peft"),
             ("alpha", with_alpha, "diffusers"))
    for name, state, family in cases:
        (tmp_path / name).mkdir()
        save_file(state, str(tmp_path / name / "w.safetensors"))
        loaded = load_lora(tmp_path / name / "w.safetensors", alpha=2.0 if family == "peft" else None)
        assert loaded.source_format == family
        assert_same_modules(loaded, lora)     # diffusers files carry the scale in up or .alpha; bare: alpha=rank given


def test_text_encoder_keys_are_reported_not_dropped(unet, lora, tmp_path, caplog):
    te = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 32),
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 2),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(2.0)}
    save_file({**to_kohya_state_dict(lora), **te}, str(tmp_path / "both.safetensors"))
    with caplog.at_level(logging.WARNING, logger="tlcm.lora"):
        both = load_lora(tmp_path / "both.safetensors")
    assert sorted(both.skipped) == sorted(te) and "3 text-encoder keys" in caplog.text
    assert match_lora(both, unet).skipped == both.skipped
    save_file(te, str(tmp_path / "te.safetensors"))
    te_only = load_lora(tmp_path / "te.safetensors")
    assert not te_only.modules and "text-encoder" in te_only.summary()
    with pytest.raises(LoraMatchError, match="only 3 text-encoder keys"):
        match_lora(te_only, unet)


@pytest.mark.parametrize("names", [
    ["foo.bar0", "foo.bar1", "foo.bar2"],
    ["single_transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "x_embedder"],   # FLUX
], ids=["random", "flux"])
def test_lora_matching_nothing_is_an_error_with_counts(unet, tmp_path, names):
    state = {}
    for name in names:
        state[f"base_model.model.{name}.lora_A.weight"] = torch.randn(2, 32)
        state[f"base_model.model.{name}.lora_B.weight"] = torch.randn(32, 2)
    save_file(state, str(tmp_path / "x.safetensors"))
    loaded = load_lora(tmp_path / "x.safetensors")
    n_targets = len(tlcm_target_modules(unet))
    with pytest.raises(LoraMatchError, match=rf"0 of 3 LoRA modules .* \({n_targets} TLCM targets\)") as err:
        merge_lora(copy.deepcopy(unet), loaded)
    assert isinstance(err.value, ValueError) and "another architecture" in str(err.value)


def test_shape_mismatch_is_an_error(unet, lora):
    name = next(iter(lora.modules))
    bad = copy.copy(lora)
    mod = lora.modules[name]
    wrong_down = torch.randn(mod.rank, mod.down.shape[1] + 1, *mod.down.shape[2:])
    bad.modules = {**lora.modules, name: LoraModule(wrong_down, mod.up, mod.alpha)}
    with pytest.raises(LoraMatchError, match=rf"1 of {len(lora.modules)} matched modules have other shapes.*{name}"):
        match_lora(bad, unet)


def test_partial_match_is_reported(unet, lora, caplog):
    extra = copy.copy(lora)
    extra.modules = {**lora.modules, "down_blocks.9.nowhere": next(iter(lora.modules.values()))}
    with caplog.at_level(logging.WARNING, logger="tlcm.lora"):
        report = merge_lora(copy.deepcopy(unet), extra)
    assert report.unmatched == ["down_blocks.9.nowhere"] and len(report.matched) == len(lora.modules)
    assert "partially" in caplog.text


@pytest.mark.parametrize("state, message", [
    ({"unet.a.lora.down.weight": torch.zeros(2, 4), "unet.a.lora.up.weight": torch.zeros(4, 2),
      "unet.a.lora_magnitude_vector": torch.zeros(4)}, "1 keys that are not plain LoRA"),
    ({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, "no LoRA keys at all"),
    ({"lora_unet_a.lora_down.weight": torch.zeros(2, 4)}, "module 'a' has no up tensor"),
    ({"lora_unet_a.lora_down.weight": torch.zeros(2, 4), "lora_unet_a.lora_up.weight": torch.zeros(4, 2),
      "unet.b.lora.down.weight": torch.zeros(2, 4), "unet.b.lora.up.weight": torch.zeros(4, 2)}, "mixes key layouts"),
    ({"unet.a.lora.down.weight": torch.zeros(2, 4), "unet.a.lora.up.weight": torch.zeros(4, 3)}, "does not fit down"),
], ids=["dora", "not-a-lora", "half", "mixed", "rank"])
def test_unsupported_contents_are_clear_errors(tmp_path, state, message):
    save_file(state, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match=message):
        load_lora(tmp_path / "x.safetensors")


@dataclass
class NotATensor:
    value: int = 1


def test_unreadable_files_are_clear_errors(lora, tmp_path):
    with pytest.raises(FileNotFoundError, match="LoRA not found"):
        load_lora(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="damaged or not safetensors"):
        load_lora(tmp_path / "junk.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type .txt"):
        load_lora(tmp_path / "notes.txt")
    torch.save({"a": NotATensor()}, tmp_path / "code.bin")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_lora(tmp_path / "code.bin")
    torch.save(to_kohya_state_dict(lora), tmp_path / "tensors.pt")     # a tensor-only pickle is fine
    assert len(load_lora(tmp_path / "tensors.pt").modules) == len(lora.modules)


def test_folders_and_configs_must_be_unambiguous(lora, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="found none"):
        load_lora(empty)
    folder = save_lora(lora, tmp_path / "adapter", "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "copy.json").write_text(json.dumps({**config, "lora_alpha": 99}))
    assert {m.alpha for m in load_lora(folder).modules.values()} == {lora.modules[next(iter(lora.modules))].alpha}
    (folder / "adapter_config.json").rename(folder / "other.json")
    with pytest.raises(ValueError, match="several LoRA configs"):
        load_lora(folder)
    with pytest.raises(ValueError, match="rank 5 but its tensors have rank 2"):
        load_lora(folder, config={**config, "r": 5})
    kohya = save_lora(lora, tmp_path / "k.safetensors", "kohya")
    with pytest.raises(ValueError, match="per-module alpha tensors"):
        load_lora(kohya, config=config)
    with pytest.raises(ValueError, match="use_dora"):
        load_lora(folder, config={**config, "use_dora": True})


def test_dtype_is_kept_unless_asked(unet, tmp_path):
    half = random_lora(unet, dtype=torch.float16)
    state = load_file(save_lora(half, tmp_path / "k.safetensors", "kohya"))
    assert {v.dtype for k, v in state.items() if not k.endswith(".alpha")} == {torch.float16}
    assert {v.dtype for k, v in state.items() if k.endswith(".alpha")} == {torch.float32}
    assert load_lora(save_lora(half, tmp_path / "d.safetensors", "diffusers")).dtype == torch.float16
    assert load_lora(save_lora(half, tmp_path / "p", "peft", dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_bad_output_requests_are_errors(lora, tmp_path):
    with pytest.raises(ValueError, match="unknown LoRA format 'lycoris'"):
        save_lora(lora, tmp_path / "x.safetensors", "lycoris")
    with pytest.raises(ValueError, match="is a folder"):
        save_lora(lora, tmp_path / "x.safetensors", "peft")
    with pytest.raises(ValueError, match="written as .safetensors"):
        save_lora(lora, tmp_path / "x", "kohya")
    with pytest.raises(ValueError, match="no UNet modules"):
        save_lora(LoraFile({}, "test", skipped=["lora_te1_x.alpha"]), tmp_path / "x.safetensors", "kohya")


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="tlcm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_convert_round_trip_and_inspect(lora, tmp_path, capsys):
    peft_dir = save_lora(lora, tmp_path / "adapter", "peft")
    out = tmp_path / "tlcm_kohya.safetensors"
    argv = ["lora", "convert", str(peft_dir), str(out), "--to", "kohya", "--alpha", "1", "--dtype", "fp16"]
    assert run_cli(argv) == 0
    state = load_file(out)
    assert {v.item() for k, v in state.items() if k.endswith(".alpha")} == {1.0}
    assert state[next(k for k in state if k.endswith("lora_up.weight"))].dtype == torch.float16
    back = tmp_path / "back"
    assert run_cli(["lora", "convert", str(out), str(back), "--to", "peft"]) == 0
    expected = LoraFile({n: LoraModule(m.down.half(), m.up.half(), 1.0) for n, m in lora.modules.items()}, "test")
    assert_same_modules(load_lora(back), expected)
    capsys.readouterr()
    assert run_cli(["lora", "inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "format: kohya" in printed and f"modules: {len(lora.modules)}" in printed and "scale: 0.5" in printed
    with pytest.raises(FileNotFoundError):
        run_cli(["lora", "inspect", str(tmp_path / "nope.safetensors")])


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def delta_sizes(lora: LoraFile) -> list[float]:
    """Module-name-free fingerprint of a LoRA's merged effect (kohya files keep flattened names)."""
    return sorted(round(float(m.delta().abs().sum()), 1) for m in lora.modules.values())


def written_files(path):
    return sorted(p for p in ([path] if path.is_file() else path.iterdir()))


@pytest.mark.parametrize("fmt, name", [("kohya", "k.safetensors"), ("diffusers", "d.safetensors"), ("peft", "p")])
def test_files_are_written_atomically_with_the_umask_and_never_clobbered(lora, tmp_path, umask_022, fmt, name):
    path = save_lora(lora, tmp_path / name, fmt)
    files = written_files(path)
    assert [oct(p.stat().st_mode & 0o777) for p in files] == ["0o644"] * len(files)
    before = {p: p.read_bytes() for p in files}
    other = LoraFile({n: LoraModule(m.down, m.up, 7.0) for n, m in lora.modules.items()}, "test")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_lora(other, path, fmt, overwrite=False)
    assert {p: p.read_bytes() for p in written_files(path)} == before
    save_lora(other, path, fmt)                     # library default: replace (callers name their own outputs)
    assert delta_sizes(load_lora(path)) == delta_sizes(other) != delta_sizes(lora)
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*/.*.tmp"))


def test_a_failed_write_keeps_the_old_file(lora, tmp_path, monkeypatch):
    import safetensors.torch
    path = save_lora(lora, tmp_path / "k.safetensors", "kohya")
    before = path.read_bytes()

    def half_written(state, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_lora(lora, path, "kohya")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["k.safetensors"]


def test_output_kind_mixups_are_refused(lora, tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a folder; kohya LoRAs are single"):
        save_lora(lora, tmp_path / "dir.safetensors", "kohya")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; a PEFT adapter is written as a folder"):
        save_lora(lora, tmp_path / "file", "peft")


def test_cli_convert_needs_force_to_replace(lora, tmp_path, capsys):
    source = save_lora(lora, tmp_path / "in.safetensors", "kohya")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the user's own file")
    argv = ["lora", "convert", str(source), str(out), "--to", "kohya", "--alpha", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"tlcm: {out} exists; refusing to overwrite it (pass --force / overwrite=True to replace it)\n"
    assert out.read_bytes() == b"the user's own file"
    assert main([*argv, "--force"]) == 0
    assert {m.scale for m in load_lora(out).modules.values()} == {0.5}
    folder = tmp_path / "peft"
    folder.mkdir()
    assert main(["lora", "convert", str(source), str(folder), "--to", "peft"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and not list(folder.iterdir())
