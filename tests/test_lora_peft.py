"""TLCM LoRA files against PEFT and diffusers themselves: whatever layout we read or write, the merged
tiny UNet must equal PEFT's own ``merge_and_unload`` of the adapter (or diffusers' own LoRA loading)."""
from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from tlcm.lora import (TLCM_TARGET_SUFFIXES, load_lora, match_lora, merge_lora, save_lora, tlcm_target_modules,
                       to_kohya_state_dict)
from tlcm.testing.tiny import CROSS_ATTENTION_DIM, TEXT_WIDTH_2, tiny_unet

OFFICIAL_CONFIG_NAME = "lora_model_adapter_config.json"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_unet():
    return tiny_unet(seed=0)


def _peft_model(base, **config):
    config.setdefault("target_modules", list(TLCM_TARGET_SUFFIXES))
    return get_peft_model(copy.deepcopy(base), LoraConfig(**config))


def make_adapter(base, folder, seed=1, **config):
    """An official-style adapter (random non-zero B, config renamed as in OPPOer/TLCMSDXL) and PEFT's merge."""
    model = _peft_model(base, **config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    model.save_pretrained(folder)
    (folder / "adapter_config.json").rename(folder / OFFICIAL_CONFIG_NAME)
    (folder / "README.md").unlink(missing_ok=True)
    return folder / "adapter_model.safetensors", model.merge_and_unload().state_dict()


def merged(base, lora, strength=1.0):
    unet = copy.deepcopy(base)
    merge_lora(unet, lora, strength)
    return unet.state_dict()


def assert_weights_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def official(base_unet, tmp_path_factory):
    return make_adapter(base_unet, tmp_path_factory.mktemp("official"), r=4, lora_alpha=6)


def test_official_adapter_merges_like_peft(base_unet, official):
    weights, reference = official
    lora = load_lora(weights)
    assert lora.source_format == "peft"
    assert {m.rank for m in lora.modules.values()} == {4} and {m.alpha for m in lora.modules.values()} == {6}
    assert any(OFFICIAL_CONFIG_NAME in note for note in lora.notes)
    assert_weights_equal(merged(base_unet, lora), reference)
    assert_weights_equal(merged(base_unet, load_lora(weights.parent)), reference)   # the folder works too


def test_strength_scales_the_delta(base_unet, official):
    weights, reference = official
    base = base_unet.state_dict()
    half = merged(base_unet, load_lora(weights), strength=0.5)
    assert_weights_equal(half, {k: base[k] + 0.5 * (reference[k] - base[k]) for k in base})


@pytest.mark.parametrize("fmt", ["kohya", "diffusers", "peft"])
def test_every_written_format_reads_back_to_the_same_merge(base_unet, official, tmp_path, fmt):
    weights, reference = official
    out = save_lora(load_lora(weights), tmp_path / ("out" if fmt == "peft" else "out.safetensors"), fmt)
    again = load_lora(out)
    assert again.source_format == fmt and not again.skipped
    assert_weights_equal(merged(base_unet, again), reference)


def test_kohya_state_dict_carries_alpha_for_the_scale(official):
    lora = load_lora(official[0])
    state = to_kohya_state_dict(lora)
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    assert len(alphas) == len(lora.modules) and all(k.startswith("lora_unet_") for k in state)
    for name, mod in lora.modules.items():
        key = "lora_unet_" + name.replace(".", "_")
        assert alphas[f"{key}.alpha"].item() / state[f"{key}.lora_down.weight"].shape[0] == pytest.approx(mod.scale)


def test_peft_export_is_accepted_by_peft(base_unet, official, tmp_path):
    weights, reference = official
    out = save_lora(load_lora(weights), tmp_path / "adapter", "peft")
    config = LoraConfig.from_pretrained(out)
    assert (config.r, config.lora_alpha) == (4, 6)
    peft_merged = PeftModel.from_pretrained(copy.deepcopy(base_unet), out).merge_and_unload().state_dict()
    assert_weights_equal(peft_merged, reference)


def test_tlcm_targets_are_what_peft_adapts_and_fully_covered(base_unet, official):
    peft_targets = {name for name, mod in _peft_model(base_unet, r=2).base_model.model.named_modules()
                    if isinstance(mod, LoraLayer)}
    assert set(tlcm_target_modules(base_unet)) == peft_targets
    report = match_lora(load_lora(official[0]), base_unet)
    assert report.coverage == 1.0 and not report.untouched_targets and not report.unmatched
    assert len(report.matched) == report.model_targets == len(peft_targets)
    assert any(mod.down.ndim == 4 for mod in load_lora(official[0]).modules.values())   # conv LoRA present


PATTERNS = dict(r=4, lora_alpha=6, use_rslora=True, rank_pattern={"attn1.to_q": 2, "down_blocks.2.resnets.0.conv1": 3},
                alpha_pattern={"attn2.to_q": 5, "to_q": 7, "ff.net.2": 16, "to_out.0": 1.5, "conv_shortcut": 3})


def test_rank_alpha_patterns_and_rslora_follow_peft(base_unet, tmp_path):
    weights, reference = make_adapter(base_unet, tmp_path / "src", seed=2, **PATTERNS)
    lora = load_lora(weights)
    assert {m.rank for m in lora.modules.values()} == {2, 3, 4} and len({m.scale for m in lora.modules.values()}) > 3
    assert_weights_equal(merged(base_unet, lora), reference)
    for fmt, name in (("kohya", "k.safetensors"), ("peft", "p")):
        assert_weights_equal(merged(base_unet, load_lora(save_lora(lora, tmp_path / name, fmt))), reference)
    peft_merged = PeftModel.from_pretrained(copy.deepcopy(base_unet), tmp_path / "p").merge_and_unload()
    assert_weights_equal(peft_merged.state_dict(), reference)


def _official_loader_merge(base, weights_folder, r):
    """What OPPO-Mente-Lab/TLCM inference.py does: LoraConfig(r) without alpha, then load_adapter("default")."""
    model = _peft_model(base, r=r)
    model.load_adapter(str(weights_folder), adapter_name="default")
    return model.merge_and_unload().state_dict()


def test_alpha_trap_warns_and_override_reproduces_official_loader(base_unet, tmp_path, caplog):
    weights, reference = make_adapter(base_unet, tmp_path / "src", seed=3, r=64, lora_alpha=64)
    with caplog.at_level(logging.WARNING, logger="tlcm.lora"):
        honoured = load_lora(weights)
    assert "0.125" in caplog.text and any("0.125" in note for note in honoured.notes)
    assert_weights_equal(merged(base_unet, honoured), reference)          # the config is honoured ...
    official = _official_loader_merge(base_unet, weights.parent, r=64)
    overridden = load_lora(weights, alpha=8)                               # ... unless alpha=8 is asked for
    assert {m.scale for m in overridden.modules.values()} == {0.125}
    assert_weights_equal(merged(base_unet, overridden), official)


def test_adapter_without_config_gets_peft_default_alpha_like_official_loader(base_unet, official, tmp_path):
    (tmp_path / "bare").mkdir()
    weights = shutil.copy(official[0], tmp_path / "bare" / "adapter_model.safetensors")
    lora = load_lora(weights)
    assert {m.alpha for m in lora.modules.values()} == {8}
    assert any("lora_alpha=8" in note for note in lora.notes)
    assert_weights_equal(merged(base_unet, lora), _official_loader_merge(base_unet, tmp_path / "bare", r=4))


def test_explicit_config_overrides_discovery(base_unet, official, tmp_path):
    weights, reference = official
    lora = load_lora(weights, config={"peft_type": "LORA", "r": 4, "lora_alpha": 2, "target_modules": ["to_q"]})
    assert {m.alpha for m in lora.modules.values()} == {2}
    base = base_unet.state_dict()
    assert_weights_equal(merged(base_unet, lora), {k: base[k] + (reference[k] - base[k]) / 3 for k in base})


def test_diffusers_export_loads_in_diffusers_at_the_right_scale(tiny_pipe, official, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    lora = load_lora(official[0])
    path = save_lora(lora, tmp_path / "pytorch_lora_weights.safetensors", "diffusers")
    pipe = StableDiffusionXLPipeline(**{**tiny_pipe.components, "unet": copy.deepcopy(tiny_pipe.unet)})
    pipe.load_lora_weights(str(path))
    ours = copy.deepcopy(tiny_pipe.unet)
    merge_lora(ours, lora)
    gen = torch.Generator().manual_seed(0)
    inputs = dict(sample=torch.randn(1, 4, 8, 8, generator=gen), timestep=500,
                  encoder_hidden_states=torch.randn(1, 77, CROSS_ATTENTION_DIM, generator=gen),
                  added_cond_kwargs={"text_embeds": torch.randn(1, TEXT_WIDTH_2, generator=gen),
                                     "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])})
    with torch.no_grad():
        expected, got, plain = (unet(**inputs).sample for unet in (ours, pipe.unet, tiny_pipe.unet))
    assert (expected - plain).abs().max() > 1e-2                            # the LoRA matters at this scale
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
