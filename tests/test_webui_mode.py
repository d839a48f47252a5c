"""The "TLCM" accordion: UI on both tabs, TLCM mode applied before the host validates, infotext and paste-back."""
import pytest
import torch

from webui_stub.harness import FakeSDXL, conditioning, load_extension, purge, start_webui


@pytest.fixture
def webui(monkeypatch, tmp_path):
    webui = start_webui(monkeypatch)
    webui.shared.sd_model = FakeSDXL(None)
    webui.shared.cmd_opts.lora_dir = str(tmp_path / "Lora")
    load_extension(webui)
    yield webui
    purge()


def runner(webui, is_img2img=False):
    runner = webui.scripts.ScriptRunner(is_img2img)
    runner.setup_ui()
    return runner


def generate(webui, runner, script_args, **kwargs):
    p = webui.processing.StableDiffusionProcessing(
        cond=conditioning(1, 1), uncond=conditioning(1, 2), steps=30, cfg_scale=7.0, sampler_name="DPM++ 2M",
        scheduler="Karras", scripts=runner, script_args=list(script_args), **kwargs)
    samples, infotext = webui.processing.process_images(p)
    return p, infotext


@pytest.mark.parametrize("is_img2img", [False, True])
def test_accordion_with_switch_and_steps_on_both_tabs(webui, is_img2img):
    import gradio
    r = runner(webui, is_img2img)
    enabled, steps = r.inputs
    assert (type(enabled).__name__, enabled.label, enabled.value) == ("Checkbox", "TLCM mode", False)
    assert (steps.label, steps.kwargs["minimum"], steps.kwargs["maximum"], steps.value) == ("TLCM steps", 1, 8, 4)
    accordion = next(c for c in gradio.created if type(c).__name__ == "Accordion")
    assert accordion.args == ("TLCM",)
    tab = "img2img" if is_img2img else "txt2img"
    assert enabled.kwargs["elem_id"] == f"script_{tab}_tlcm_mode"


def test_mode_sets_sampler_schedule_cfg_steps_and_infotext_round_trips(webui):
    r = runner(webui)
    model = webui.shared.sd_model
    p, infotext = generate(webui, r, [True, 3])
    assert (p.sampler_name, p.scheduler, p.cfg_scale, p.steps) == ("TLCM", "TLCM", 1.0, 3)
    assert [call[0] for call in model.timesteps] == [999.0, 499.0, 124.0]
    for part in ("Steps: 3", "Sampler: TLCM", "CFG scale: 1.0", "Schedule type: TLCM", "TLCM mode: True"):
        assert part in infotext
    params = webui.infotext_utils.parse_generation_parameters(infotext)
    assert webui.infotext_utils.paste_values(r.infotext_fields, params) == [True, 3.0]
    assert webui.sd_samplers.get_sampler_from_infotext(params) == "TLCM"

    r2 = runner(webui)
    p2, infotext2 = generate(webui, r2, [True, 3])
    assert infotext2 == infotext


def test_mode_off_leaves_the_users_settings_and_pastes_off(webui):
    r = runner(webui)
    p, infotext = generate(webui, r, [False, 4])
    assert (p.sampler_name, p.scheduler, p.cfg_scale, p.steps) == ("DPM++ 2M", "Karras", 7.0, 30)
    assert "TLCM" not in infotext
    params = webui.infotext_utils.parse_generation_parameters(infotext)
    assert webui.infotext_utils.paste_values(r.infotext_fields, params) == [False, None]


def test_img2img_in_mode(webui):
    r = runner(webui, is_img2img=True)
    init = torch.zeros(1, 4, 8, 8)
    p, infotext = generate(webui, r, [True, 4], init_latent=init, denoising_strength=0.5)
    assert [call[0] for call in webui.shared.sd_model.timesteps] == [499.0, 374.0, 249.0, 124.0]
    assert "TLCM mode: True" in infotext


@pytest.mark.parametrize("args, message", [([True, 12], "steps must be 1-8 (the official TLCM milestone table"), ([True, 0], "steps must be 1-8"), ([True, 4.5], "whole number"),
                                           (["yes", 4], "true or false")])
def test_bad_api_arguments_are_reported_not_ignored(webui, args, message, capsys):
    r = runner(webui)
    p, infotext = generate(webui, r, args)
    assert p.sampler_name == "DPM++ 2M" and "TLCM mode: True" not in infotext
    assert any(message in c and "without TLCM mode" in c for c in p.comments)
    assert "TLCM warning: " in infotext and message in infotext     # API callers read the infotext
    assert message in capsys.readouterr().err


def test_api_style_float_steps_are_accepted(webui):
    p, infotext = generate(webui, runner(webui), [True, 6.0])
    assert p.steps == 6 and "Steps: 6" in infotext


@pytest.mark.parametrize("is_img2img", [False, True])
def test_switch_and_slider_also_set_the_tabs_own_controls(webui, is_img2img):
    r = runner(webui, is_img2img)
    enabled, steps = r.inputs
    tab = "img2img" if is_img2img else "txt2img"
    (fn, inputs, outputs), = enabled.listeners
    assert steps.listeners == enabled.listeners and inputs == [enabled, steps]
    assert outputs == [r.main_controls[f"{tab}_{k}"] for k in ("sampling", "scheduler", "steps", "cfg_scale")]
    assert fn(True, 6.0) == [{"value": "TLCM"}, {"value": "TLCM"}, {"value": 6}, {"value": 1.0}]
    assert fn(False, 6.0) == [{}, {}, {}, {}]
    assert "TLCM" in [s.name for s in webui.sd_samplers.all_samplers]
    assert "TLCM" in webui.sd_schedulers.schedulers_map
