"""Tests that kill mutants of ``tlcm/lora/config.py`` the older tests let live (bench/results/mutation.md).

The scale rules of a PEFT ``LoraConfig`` JSON: field checks, rank/alpha patterns (PEFT's ``get_pattern_key``)
and the official-scale warning. Every expectation is written out, never computed by ``tlcm``.
"""
import math

import pytest

from tlcm.lora.config import AdapterConfig, pattern_key

# tlcm/lora/targets.py's TLCM_TARGET_SUFFIXES, written out (the official script's target_modules)
TLCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def read(data, source="cfg.json"):
    return AdapterConfig.from_dict(data, source)


def refused(data) -> str:
    with pytest.raises(ValueError) as err:
        read(data)
    return str(err.value)


def test_every_scale_field_is_read():
    config = read({"peft_type": "lora", "r": 4, "lora_alpha": 6, "rank_pattern": {"attn1.to_q": 2},
                   "alpha_pattern": {"to_q": 7}, "use_rslora": True, "target_modules": ["to_q", "to_k"]})
    assert config == AdapterConfig(r=4, lora_alpha=6.0, rank_pattern={"attn1.to_q": 2}, alpha_pattern={"to_q": 7.0},
                                   use_rslora=True, target_modules=("to_q", "to_k"), source="cfg.json")
    assert type(config.lora_alpha) is float and type(config.alpha_pattern["to_q"]) is float


@pytest.mark.parametrize("data", [{"peft_type": "LORA"}, {"peft_type": None, "r": 8}, {"peft_type": "", "r": 8},
                                  {"r": 8}])
def test_peft_defaults(data):
    config = AdapterConfig.from_dict(data)
    assert config == AdapterConfig(r=8, lora_alpha=8.0, rank_pattern={}, alpha_pattern={}, use_rslora=False,
                                   target_modules=None, source="<dict>")
    assert config.source == "<dict>"


@pytest.mark.parametrize("data, message", [
    ({"peft_type": "loha", "r": 4}, "cfg.json: peft_type 'LOHA' is not supported; only plain LoRA (peft_type LORA)"),
    ({"r": 4, "use_dora": True}, "cfg.json: use_dora=true is not supported (the adapter is not a plain low-rank delta)"),
    ({"r": 4, "lora_bias": True},
     "cfg.json: lora_bias=true is not supported (the adapter is not a plain low-rank delta)"),
    ({"r": 4, "use_dora": "yes"}, "cfg.json: field use_dora must be true or false, got 'yes' (str)"),
    ({"r": 4, "lora_bias": 1}, "cfg.json: field lora_bias must be true or false, got 1 (int)"),
    ({"r": 4, "use_rslora": "true"}, "cfg.json: field use_rslora must be true or false, got 'true' (str)"),
    ({"r": True}, "cfg.json: field r must be a positive integer, got True (bool)"),
    ({"r": "4"}, "cfg.json: field r must be a positive integer, got '4' (str)"),
    ({"r": 4.0}, "cfg.json: field r must be a positive integer, got 4.0 (float)"),
    ({"r": 0}, "cfg.json: field r must be a positive integer, got 0 (int)"),
    ({"r": -2}, "cfg.json: field r must be a positive integer, got -2 (int)"),
    ({"r": 4, "lora_alpha": True}, "cfg.json: field lora_alpha must be a positive finite number, got True (bool)"),
    ({"r": 4, "lora_alpha": "8"}, "cfg.json: field lora_alpha must be a positive finite number, got '8' (str)"),
    ({"r": 4, "lora_alpha": [8]}, "cfg.json: field lora_alpha must be a positive finite number, got [8] (list)"),
    ({"r": 4, "lora_alpha": math.nan}, "cfg.json: field lora_alpha must be a positive finite number, got nan (float)"),
    ({"r": 4, "lora_alpha": math.inf}, "cfg.json: field lora_alpha must be a positive finite number, got inf (float)"),
    ({"r": 4, "lora_alpha": 0}, "cfg.json: field lora_alpha must be a positive finite number, got 0 (int)"),
    ({"r": 4, "lora_alpha": -1.5}, "cfg.json: field lora_alpha must be a positive finite number, got -1.5 (float)"),
    ({"r": 4, "rank_pattern": ["to_q"]},
     "cfg.json: field rank_pattern must be an object of pattern: value, got ['to_q'] (list)"),
    ({"r": 4, "alpha_pattern": "to_q"},
     "cfg.json: field alpha_pattern must be an object of pattern: value, got 'to_q' (str)"),
    ({"r": 4, "rank_pattern": {"*": 2}},
     "cfg.json: field rank_pattern has an invalid regex '*' (nothing to repeat at position 8)"),
    ({"r": 4, "alpha_pattern": {"to_q": 1, "(": 2}},
     "cfg.json: field alpha_pattern has an invalid regex '(' (missing ), unterminated subpattern at position 7)"),
    ({"r": 4, "rank_pattern": {"to_q": 0}}, "cfg.json: field rank_pattern['to_q'] must be a positive integer, got 0 (int)"),
    ({"r": 4, "rank_pattern": {"to_q": 2.0}},
     "cfg.json: field rank_pattern['to_q'] must be a positive integer, got 2.0 (float)"),
    ({"r": 4, "alpha_pattern": {"to_q": "x"}},
     "cfg.json: field alpha_pattern['to_q'] must be a positive finite number, got 'x' (str)"),
    ({"r": 4, "alpha_pattern": {"to_q": math.inf}},
     "cfg.json: field alpha_pattern['to_q'] must be a positive finite number, got inf (float)"),
    ({"r": 4, "target_modules": ["to_q", 1]},
     "cfg.json: field target_modules must be a list of module names or a regex string, got ['to_q', 1] (list)"),
])
def test_wrong_fields_are_refused_naming_file_and_field(data, message):
    assert refused(data) == message


@pytest.mark.parametrize("data, expected", [
    ({"r": 1, "lora_alpha": 0.5}, AdapterConfig(r=1, lora_alpha=0.5, source="cfg.json")),        # the smallest
    ({"r": 4, "lora_alpha": 16, "use_dora": False, "lora_bias": None, "use_rslora": False},
     AdapterConfig(r=4, lora_alpha=16.0, source="cfg.json")),
    ({"r": 4, "rank_pattern": [], "alpha_pattern": None},                  # empty / null: no patterns
     AdapterConfig(r=4, source="cfg.json")),
    ({"r": 4, "rank_pattern": {"to_q": 1}, "alpha_pattern": {"to_k": 0.25}},
     AdapterConfig(r=4, rank_pattern={"to_q": 1}, alpha_pattern={"to_k": 0.25}, source="cfg.json")),
])
def test_valid_edge_values_are_accepted(data, expected):
    assert read(data) == expected


def test_rank_and_alpha_per_module_follow_peft_patterns():
    config = read({"r": 4, "lora_alpha": 6, "rank_pattern": {"attn1.to_q": 2, "to_q": 3},
                   "alpha_pattern": {"to_k": 9, "attn1.to_k": 1}})
    assert config.rank_for("down_blocks.1.attn1.to_q") == 2                # a dotted suffix
    assert config.rank_for("attn1.to_q") == 2                              # the whole name
    assert config.rank_for("attn2.to_q") == 3                              # the next pattern
    assert config.rank_for("xto_q") == 4                                   # no dot before the suffix: r
    assert config.rank_for("to_q.lora") == 4                               # must end the name
    assert config.alpha_for("down_blocks.1.attn1.to_k") == 9.0             # first matching pattern wins
    assert config.alpha_for("attn1.to_v") == 6.0                           # lora_alpha


def test_pattern_key_is_peft_get_pattern_key():
    assert pattern_key({"to_q": 3, "attn1.to_q": 2}, "b.attn1.to_q") == "to_q"
    assert pattern_key({"attn1.to_q": 2, "to_q": 3}, "b.attn1.to_q") == "attn1.to_q"
    assert pattern_key({"attn1.to_q": 2}, "b.attn2.to_q") == "b.attn2.to_q"    # no match: the name itself
    assert pattern_key({}, "to_q") == "to_q"
    # no regex match, but the name is itself a key (as PEFT: rank_pattern.get(name, r))
    assert AdapterConfig(r=4, rank_pattern={"a+": 9}).rank_for("a+") == 9
    assert AdapterConfig(r=4, lora_alpha=6.0, alpha_pattern={"a+": 9.0}).alpha_for("a+") == 9.0


@pytest.mark.parametrize("config, expected", [
    (AdapterConfig(r=64, lora_alpha=32.0, target_modules=TLCM_TARGETS, source="cfg.json"),
     "cfg.json says lora_alpha=32 (scale 0.5), but the official TLCM inference.py ignores the saved config and "
     "applies PEFT's default alpha 8/64 = 0.125; honouring the config. Pass alpha=8 (CLI --alpha 8) to reproduce "
     "the official images"),
    (AdapterConfig(r=64, lora_alpha=64.0, target_modules=TLCM_TARGETS[::-1], source="a.json"),      # any order
     "a.json says lora_alpha=64 (scale 1), but the official TLCM inference.py ignores the saved config and "
     "applies PEFT's default alpha 8/64 = 0.125; honouring the config. Pass alpha=8 (CLI --alpha 8) to reproduce "
     "the official images"),
    (AdapterConfig(r=64, lora_alpha=8.0, alpha_pattern={"to_q": 16.0}, target_modules=TLCM_TARGETS, source="b.json"),
     "b.json says lora_alpha=8 (scale 0.125), but the official TLCM inference.py ignores the saved config and "
     "applies PEFT's default alpha 8/64 = 0.125; honouring the config. Pass alpha=8 (CLI --alpha 8) to reproduce "
     "the official images"),
    (AdapterConfig(r=64, lora_alpha=8.0, target_modules=TLCM_TARGETS), None),        # what the official loader uses
    (AdapterConfig(r=32, lora_alpha=32.0, target_modules=TLCM_TARGETS), None),       # not the official rank
    (AdapterConfig(r=64, lora_alpha=32.0, target_modules=TLCM_TARGETS[1:]), None),   # other targets
    (AdapterConfig(r=64, lora_alpha=32.0, target_modules=TLCM_TARGETS + ("to_x",)), None),
    (AdapterConfig(r=64, lora_alpha=32.0, target_modules="to_q|to_k"), None),        # a regex string
    (AdapterConfig(r=64, lora_alpha=32.0), None),                                    # no targets
])
def test_official_scale_warning(config, expected):
    assert config.official_scale_warning() == expected
