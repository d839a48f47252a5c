"""Chinese text encoder (PEA-Diffusion adapter) on the tiny kit: real file layouts, real key names, numerics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tlcm.chinese import ChineseTextEncoder, PEAAdapter, load_adapter, load_text_tower
from tlcm.testing.chinese import chinese_vocab, save_tiny_pea_adapter, tiny_chinese_kit
from tlcm.testing.tiny import CROSS_ATTENTION_DIM, TEXT_WIDTH_2

PROMPTS = ["一只猫在草地上", "水墨山水画, 高清"]
REAL_KEYS = {"layernorm.weight", "layernorm.bias", "projector.0.weight", "projector.2.weight", "fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return tiny_chinese_kit(tmp_path_factory.mktemp("chinese"))


@pytest.fixture(scope="module")
def encoder(kit):
    return ChineseTextEncoder.from_pretrained(*kit)


def test_adapter_file_has_upstream_key_names_and_shapes(kit):
    from safetensors.torch import load_file
    state = load_file(str(kit[1]))
    assert set(state) == REAL_KEYS
    adapter = load_adapter(kit[1])
    assert (adapter.text_width, adapter.pooled_dim, adapter.cross_attention_dim) == (16, TEXT_WIDTH_2,
                                                                                     CROSS_ATTENTION_DIM)


def test_tokenizer_matches_cn_clip_layout(encoder):
    vocab = chinese_vocab()
    ids = encoder.tokenize(["一只猫"])[0].tolist()
    expected = [vocab.index("[CLS]")] + [vocab.index(c) for c in "一只猫"] + [vocab.index("[SEP]")]
    assert ids == expected + [0] * (52 - len(expected))
    long = encoder.tokenize(["猫" * 80])[0].tolist()
    assert len(long) == 52 and long[-1] == vocab.index("[SEP]") and 0 not in long


def test_text_tower_loads_the_full_models_text_weights(kit):
    from transformers import ChineseCLIPModel
    _, tower = load_text_tower(kit[0])
    reference = ChineseCLIPModel.from_pretrained(kit[0]).text_model.eval()
    ids = torch.tensor([[101, 300, 5000, 102, 0, 0]])
    with torch.no_grad():
        got = tower(input_ids=ids, attention_mask=ids.ne(0)).last_hidden_state
        want = reference(input_ids=ids, attention_mask=ids.ne(0)).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_text_only_folder_loads_too(kit, tmp_path):
    import shutil
    from transformers import ChineseCLIPModel
    full = ChineseCLIPModel.from_pretrained(kit[0])
    full.text_model.save_pretrained(tmp_path)
    shutil.copy(kit[0] / "vocab.txt", tmp_path)
    _, tower = load_text_tower(tmp_path)
    embeddings = tower.embeddings.word_embeddings.weight
    torch.testing.assert_close(embeddings, full.text_model.embeddings.word_embeddings.weight)


def test_pickled_bin_text_model_loads_like_the_hf_release(kit, tmp_path):
    import shutil
    from safetensors.torch import load_file
    state = load_file(str(kit[0] / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")   # OFA-Sys ships pytorch_model.bin, not safetensors
    for name in ("config.json", "vocab.txt"):
        shutil.copy(kit[0] / name, tmp_path)
    _, tower = load_text_tower(tmp_path)
    torch.testing.assert_close(tower.embeddings.word_embeddings.weight,
                               state["text_model.embeddings.word_embeddings.weight"])


def test_encode_equals_adapter_formula_from_raw_weights(kit, encoder):
    from safetensors.torch import load_file
    from transformers import ChineseCLIPModel
    w = load_file(str(kit[1]))
    ids = encoder.tokenize(PROMPTS)
    with torch.no_grad():
        reference = ChineseCLIPModel.from_pretrained(kit[0]).text_model
        h = reference(input_ids=ids, attention_mask=ids.ne(0)).last_hidden_state
    x = F.layer_norm(h, (h.shape[-1],), w["layernorm.weight"], w["layernorm.bias"])
    x = F.linear(F.gelu(F.linear(x, w["projector.0.weight"])), w["projector.2.weight"])
    tokens, pooled = encoder.encode(PROMPTS)
    assert tokens.shape == (2, 52, CROSS_ATTENTION_DIM) and pooled.shape == (2, TEXT_WIDTH_2)
    torch.testing.assert_close(pooled, x.mean(1))
    torch.testing.assert_close(tokens, F.linear(F.gelu(x), w["fc.weight"], w["fc.bias"]))
    assert not torch.allclose(tokens[0], tokens[1])


def test_pickled_bin_release_format_loads_like_safetensors(kit, tmp_path):
    from safetensors.torch import load_file
    state = {k: v.half() for k, v in load_file(str(kit[1])).items()}   # the HF release is a pickled fp16 state dict
    torch.save(state, tmp_path / "pytorch_model.bin")
    torch.testing.assert_close(load_adapter(tmp_path / "pytorch_model.bin").fc.weight, state["fc.weight"].float())


def test_depth_and_widths_come_from_the_weights():
    state = PEAAdapter([16, 20, 20, 12], 40).state_dict()
    adapter = PEAAdapter.from_state_dict(state)
    assert [m.out_features for m in adapter.projector if isinstance(m, torch.nn.Linear)] == [20, 20, 12]
    assert adapter(torch.randn(1, 5, 16))[0].shape == (1, 5, 40)
    with pytest.raises(ValueError, match="not a PEA-Diffusion adapter"):
        PEAAdapter.from_state_dict({"proj.weight": torch.zeros(2, 2)})


def test_tlcm_generate_accepts_the_embeddings(encoder, tiny_pipe):
    import numpy as np
    from diffusers import StableDiffusionXLPipeline
    from tlcm.generate import GenerationSettings, generate
    pipe = StableDiffusionXLPipeline(**tiny_pipe.components)   # generate() swaps the scheduler: not on the shared one
    images = []
    for prompt in PROMPTS:
        embeds, pooled = encoder.encode([prompt])
        settings = GenerationSettings(prompt=prompt, steps=4, width=64, height=64)
        [image] = generate(pipe, settings, prompt_embeds=embeds, pooled_prompt_embeds=pooled)
        assert image.size == (64, 64)
        images.append(np.asarray(image, dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() > 0


def test_missing_files_name_the_real_downloads(kit, tmp_path):
    with pytest.raises(FileNotFoundError, match="OFA-Sys/chinese-clip-vit-huge-patch14"):
        ChineseTextEncoder.from_pretrained(tmp_path, kit[1])
    with pytest.raises(FileNotFoundError, match="OPPOer/PEA-Diffusion"):
        ChineseTextEncoder.from_pretrained(kit[0], tmp_path / "pytorch_model.bin")


def test_adapter_of_another_text_width_is_refused(kit, tmp_path):
    other = save_tiny_pea_adapter(tmp_path / "a.safetensors")
    from safetensors.torch import load_file, save_file
    state = load_file(str(other))
    state["layernorm.weight"], state["layernorm.bias"] = torch.ones(8), torch.zeros(8)
    state["projector.0.weight"] = torch.zeros(24, 8)
    save_file(state, str(other))
    with pytest.raises(ValueError, match="width 8"):
        ChineseTextEncoder.from_pretrained(kit[0], other)
