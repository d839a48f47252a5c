"""The WebUI LoRA story: PEFT files in the Lora folder are found, warned about, converted to kohya + .alpha."""
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from webui_stub.harness import FakeSDXL, conditioning, fake_networks, load_extension, purge, start_webui

MODULES = {   # TLCM targets with SDXL module paths; shapes are small stand-ins
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": ((64, 16), (16, 64)),
    "mid_block.resnets.0.conv1": ((64, 16, 3, 3), (16, 64, 1, 1)),
    "up_blocks.0.attentions.0.proj_out": ((64, 16), (16, 64)),
}
RANK, OFFICIAL_ALPHA = 64, 8


@pytest.fixture
def peft_file(tmp_path):
    """An official-style TLCM adapter: ``base_model.model.*.lora_A/B``, rank 64, no alpha, no config."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, (a, b) in MODULES.items():
        state[f"base_model.model.{name}.lora_A.weight"] = torch.randn(a, generator=g)
        state[f"base_model.model.{name}.lora_B.weight"] = torch.randn(b, generator=g)
    path = tmp_path / "Lora" / "TLCMSDXL" / "adapter_model.safetensors"
    path.parent.mkdir(parents=True)
    save_file(state, str(path))
    return path


@pytest.fixture
def webui(monkeypatch, peft_file):
    webui = start_webui(monkeypatch)
    webui.shared.sd_model = FakeSDXL(None)
    webui.shared.cmd_opts.lora_dir = str(peft_file.parents[1])
    yield webui
    purge()


def test_detection_warns_on_load_with_both_ways_out(webui, peft_file, capsys):
    load_extension(webui)
    err = capsys.readouterr().err
    assert "adapter_model.safetensors is a PEFT/diffusers-layout LoRA: the WebUI applies 0 of its modules" in err
    command = f'tlcm.cli lora convert "{peft_file}" "{peft_file.parent / "TLCMSDXL-kohya.safetensors"}" --to kohya'
    assert command in err
    from webui_tlcm.script import lora_status
    assert "LoRA files the WebUI cannot apply" in lora_status() and "TLCMSDXL-kohya" in lora_status()


def test_kohya_files_are_not_flagged(webui, peft_file):
    from webui_tlcm import lora_folder
    kohya = peft_file.parents[1] / "other.safetensors"
    save_file({"lora_unet_mid_block_resnets_0_conv1.lora_down.weight": torch.zeros(4, 16, 3, 3),
               "lora_unet_mid_block_resnets_0_conv1.lora_up.weight": torch.zeros(16, 4, 1, 1),
               "lora_unet_mid_block_resnets_0_conv1.alpha": torch.tensor(4.0)}, str(kohya))
    assert [item.path for item in lora_folder.scan(peft_file.parents[1])] == [peft_file]


def test_one_click_conversion_writes_kohya_with_the_official_scale(webui, peft_file, capsys):
    load_extension(webui)
    r = webui.scripts.ScriptRunner(False)
    r.setup_ui()
    import gradio
    button = next(c for c in gradio.created if type(c).__name__ == "Button")
    html = button.handler()
    out = peft_file.parent / "TLCMSDXL-kohya.safetensors"
    assert out.is_file()
    assert "3/3 LoRA modules matched" in html and "scale 0.125" in html and "&lt;lora:TLCMSDXL-kohya:1&gt;" in html
    assert "3/3 LoRA modules matched" in capsys.readouterr().err

    peft, kohya = load_file(str(peft_file)), load_file(str(out))
    assert len(kohya) == 3 * len(MODULES)
    for name in MODULES:
        key = "lora_unet_" + name.replace(".", "_")
        assert kohya[f"{key}.alpha"].item() == OFFICIAL_ALPHA
        up, down = kohya[f"{key}.lora_up.weight"], kohya[f"{key}.lora_down.weight"]
        delta = (up.flatten(1) @ down.flatten(1)) * kohya[f"{key}.alpha"] / down.shape[0]
        b, a = peft[f"base_model.model.{name}.lora_B.weight"], peft[f"base_model.model.{name}.lora_A.weight"]
        torch.testing.assert_close(delta, (b.flatten(1) @ a.flatten(1)) * OFFICIAL_ALPHA / RANK)

    from webui_tlcm.script import lora_status
    assert "No unconverted" in lora_status()


def test_prompt_using_the_peft_file_gets_a_visible_warning(webui, peft_file):
    load_extension(webui)
    r = webui.scripts.ScriptRunner(False)
    r.setup_ui()
    p = webui.processing.StableDiffusionProcessing(cond=conditioning(1, 1), uncond=conditioning(1, 2), scripts=r,
                                                   prompt="a cat <lora:adapter_model:1>", script_args=[True, 4])
    webui.processing.process_images(p)
    assert any("applies 0 of its modules" in c for c in p.comments)
    clean = webui.processing.StableDiffusionProcessing(cond=conditioning(1, 1), uncond=conditioning(1, 2), scripts=r,
                                                       prompt="a cat <lora:TLCMSDXL-kohya:1>", script_args=[True, 4])
    webui.processing.process_images(clean)
    assert not clean.comments


def test_matched_module_report_after_the_lora_extension_activates(webui, monkeypatch, capsys):
    load_extension(webui)
    r = webui.scripts.ScriptRunner(False)
    r.setup_ui()
    monkeypatch.setitem(sys.modules, "networks", fake_networks(("TLCMSDXL-kohya", 79), ("broken", 0)))
    p = webui.processing.StableDiffusionProcessing(cond=conditioning(1, 1), uncond=conditioning(1, 2), scripts=r,
                                                   script_args=[True, 4])
    webui.processing.process_images(p)
    assert "LoRA TLCMSDXL-kohya: 79 modules applied" in capsys.readouterr().err
    assert any("LoRA broken applied 0 modules" in c for c in p.comments)


def test_unconvertible_file_is_reported_not_written(webui, peft_file):
    from webui_tlcm.script import convert_pending
    bad = peft_file.parents[1] / "flux.safetensors"
    save_file({"base_model.model.single_blocks.0.linear1.lora_A.weight": torch.zeros(4, 8),
               "base_model.model.single_blocks.0.linear1.lora_B.weight": torch.zeros(8, 4)}, str(bad))
    load_extension(webui)
    html = convert_pending()
    assert "flux.safetensors: not converted" in html
    assert not (bad.parent / "flux-kohya.safetensors").exists()
    assert (peft_file.parent / "TLCMSDXL-kohya.safetensors").exists()


def test_cli_conversion_named_in_the_warning_gives_the_same_file(webui, peft_file, tmp_path):
    from tlcm.cli import main
    from webui_tlcm import lora_folder
    (item,) = lora_folder.scan(peft_file.parents[1])
    cli_out = tmp_path / "cli-kohya.safetensors"
    assert main(["lora", "convert", str(item.path), str(cli_out), "--to", "kohya"]) == 0
    lora_folder.convert(item)
    ui, cli = load_file(str(item.converted)), load_file(str(cli_out))
    assert ui.keys() == cli.keys()
    for key in ui:
        torch.testing.assert_close(ui[key], cli[key], rtol=0, atol=0)


def test_damaged_files_do_not_break_the_scan(webui, peft_file):
    from webui_tlcm import lora_folder
    (peft_file.parents[1] / "damaged.safetensors").write_bytes(b"not a safetensors file")
    assert [item.path for item in lora_folder.scan(peft_file.parents[1])] == [peft_file]


def kohya_file(path, n_modules):
    """A kohya LoRA file with ``n_modules`` modules (down, up, alpha each)."""
    state = {}
    for i in range(n_modules):
        key = f"lora_unet_down_blocks_1_attentions_0_transformer_blocks_{i}_attn1_to_q"
        state |= {f"{key}.lora_down.weight": torch.zeros(2, 8), f"{key}.lora_up.weight": torch.zeros(8, 2),
                  f"{key}.alpha": torch.tensor(1.0)}
    save_file(state, str(path))
    return path


def network(name, path, modules):
    return SimpleNamespace(name=name, modules=modules, network_on_disk=SimpleNamespace(filename=str(path)))


def generate(webui, monkeypatch, nets):
    load_extension(webui)
    r = webui.scripts.ScriptRunner(False)
    r.setup_ui()
    monkeypatch.setitem(sys.modules, "networks", SimpleNamespace(loaded_networks=nets))
    p = webui.processing.StableDiffusionProcessing(cond=conditioning(1, 1), uncond=conditioning(1, 2), scripts=r,
                                                   script_args=[True, 4])
    _, infotext = webui.processing.process_images(p)
    return p, infotext


def test_forge_counts_come_from_its_patchers_never_a_false_zero(webui, monkeypatch, tmp_path, capsys):
    """Forge keeps ``net.modules`` empty; its patchers hold one entry per patched weight."""
    full, dead, unknown = (kohya_file(tmp_path / f"{n}.safetensors", 5) for n in ("full", "dead", "unknown"))
    unet_patches = {(str(full), 1.0, 1.0, False): {f"w{i}": [] for i in range(4)}, (str(dead), 1.0, 1.0, False): {}}
    clip_patches = {(str(full), 1.0, 1.0, False): {"te.w": []}}
    webui.shared.sd_model.forge_objects = SimpleNamespace(
        unet=SimpleNamespace(lora_patches=unet_patches),
        clip=SimpleNamespace(patcher=SimpleNamespace(lora_patches=clip_patches)))
    p, infotext = generate(webui, monkeypatch, [network("full", full, {}), network("dead", dead, {}),
                                                network("unknown", unknown, {})])
    assert "LoRA full: 5 modules applied" in capsys.readouterr().err
    assert list(p.comments) == ["TLCM: LoRA dead applied 0 modules (wrong model or unconverted PEFT file)"]
    assert "TLCM warning: LoRA dead applied 0 modules" in infotext and "unknown" not in infotext


def test_a1111_partial_and_empty_matches_reach_the_infotext(webui, monkeypatch, tmp_path):
    part, none_ = kohya_file(tmp_path / "part.safetensors", 6), kohya_file(tmp_path / "none.safetensors", 2)
    p, infotext = generate(webui, monkeypatch, [network("part", part, {f"m{i}": None for i in range(4)}),
                                                network("none", none_, {})])
    assert "TLCM warning: LoRA part applied 4 of its 6 modules (partial match); LoRA none applied 0 modules" \
        in infotext
    assert len(p.comments) == 2


def distilled_lora(path, base):
    """A one-module kohya LoRA as tlcm-train writes it: its base recorded in the file's metadata."""
    from tlcm.lora import LoraFile, LoraModule, save_lora
    module = LoraModule(torch.ones(2, 8), torch.ones(8, 2), 3.0)
    return save_lora(LoraFile({"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": module}, "peft",
                              base=base), path, "kohya")


@pytest.fixture
def distilled_loras(tmp_path):
    """LoRAs distilled from an ε model, a v-prediction zero-SNR model, and one without a record."""
    from tlcm.lora import BaseKind
    return [network(name, distilled_lora(tmp_path / f"{name}.safetensors", base), {"m": None})
            for name, base in (("eps", BaseKind("epsilon")), ("vz", BaseKind("v_prediction", True)),
                               ("plain", None))]


def test_a1111_warns_when_a_lora_was_distilled_from_another_kind_of_model(webui, monkeypatch, distilled_loras):
    """A1111 on a v-prediction checkpoint (``parameterization == "v"``) with its "Zero Terminal SNR" noise
    schedule: the ε LoRA is a warning naming both kinds; the v zero-SNR LoRA and the unrecorded one are not."""
    webui.shared.sd_model.parameterization = "v"
    webui.shared.opts.sd_noise_schedule = "Zero Terminal SNR"
    p, infotext = generate(webui, monkeypatch, distilled_loras)
    expected = ("LoRA eps was distilled from a epsilon model, but this model is v_prediction with zero terminal "
                "SNR: its steps will misread the model's output")
    assert [c for c in p.comments] == [next(c for c in p.comments if expected in c)]
    assert expected in infotext


def test_a1111_default_schedule_flags_the_zero_snr_lora_instead(webui, monkeypatch, distilled_loras):
    webui.shared.sd_model.parameterization = "v"
    p, _ = generate(webui, monkeypatch, distilled_loras)
    assert len(p.comments) == 2
    assert all("this model is v_prediction:" in c for c in p.comments)
    assert any("LoRA eps was distilled from a epsilon model" in c for c in p.comments)
    assert any("LoRA vz was distilled from a v_prediction with zero terminal SNR model" in c for c in p.comments)


def v_denoised(sigma, v, x):
    """x̂0 of a v-prediction output in σ space (σ_data = 1), as Forge's predictor computes it."""
    return x / (1 + sigma ** 2) - v * sigma / (1 + sigma ** 2).sqrt()


def test_forge_reads_its_predictor_and_the_checkpoints_zero_snr_flag(webui, monkeypatch, distilled_loras):
    """Forge: the predictor's ``prediction_type`` and ``model_config.ztsnr`` (a v-pred zero-SNR checkpoint
    rescales Forge's σ table without the setting); an ``eps`` parameterization left on the model is not read."""
    model = webui.shared.sd_model
    model.parameterization = "eps"
    sigmas = ((1 - model.alphas_cumprod) / model.alphas_cumprod).sqrt()
    predictor = SimpleNamespace(      # Forge's Prediction(prediction_type="v_prediction"), σ_data = 1
        prediction_type="v_prediction", sigmas=sigmas,
        calculate_denoised=lambda sigma, out, x: v_denoised(sigma.view(-1, 1, 1, 1), out, x),
        noise_scaling=lambda sigma, noise, latent, max_denoise=False: sigma * noise + latent)
    model.forge_objects = SimpleNamespace(unet=SimpleNamespace(model=SimpleNamespace(predictor=predictor)))
    model.model_config = SimpleNamespace(ztsnr=True)
    p, _ = generate(webui, monkeypatch, distilled_loras)
    assert [c for c in p.comments if "distilled from" in c] == [
        next(c for c in p.comments if "LoRA eps was distilled from a epsilon model, but this model is "
             "v_prediction with zero terminal SNR" in c)]


def test_the_model_kind_is_not_guessed():
    """A flow model, an unknown prediction type and a model without the attribute are not judged."""
    from tlcm.lora import BaseKind
    from webui_tlcm.model_kind import webui_model_kind
    opts = SimpleNamespace(sd_noise_schedule="Default")
    forge = lambda kind: SimpleNamespace(forge_objects=SimpleNamespace(unet=SimpleNamespace(  # noqa: E731
        model=SimpleNamespace(predictor=SimpleNamespace(prediction_type=kind)))))
    assert webui_model_kind(forge("const"), opts) is None
    assert webui_model_kind(forge("edm"), opts) is None
    assert webui_model_kind(forge("epsilon"), opts) == BaseKind("epsilon", False)
    assert webui_model_kind(SimpleNamespace(), opts) is None
    assert webui_model_kind(SimpleNamespace(parameterization="eps"), opts) == BaseKind("epsilon", False)
    assert webui_model_kind(SimpleNamespace(parameterization="eps"), SimpleNamespace()) == BaseKind("epsilon")


def test_callbacks_turn_any_error_into_one_line(webui, peft_file, monkeypatch):
    """The Convert button and the status panel answer with a message, never an exception (HTTP 500)."""
    from webui_tlcm import lora_folder
    from webui_tlcm.script import convert_pending, lora_status
    load_extension(webui)

    def broken(item):
        raise ImportError("cannot import name 'X' from 'accelerate'\nsecond line")
    monkeypatch.setattr(lora_folder, "convert", broken)
    assert "adapter_model.safetensors: not converted: ImportError: cannot import name &#x27;X&#x27; from " \
           "&#x27;accelerate&#x27; second line</li>" in convert_pending()

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(lora_folder, "scan", unreadable)
    assert "could not scan the Lora folder: PermissionError" in lora_status()
    assert "could not scan the Lora folder" in convert_pending()
