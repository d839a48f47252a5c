"""NaN/Inf stop with ``NonFiniteError`` wherever they appear: LoRA files, the k-diffusion sampler hosts use,
``TLCMScheduler.step``, ``tlcm.generate`` (latent and decoded image) and ``tlcm generate`` (exit 2, one line)."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

from tlcm.cli import main
from tlcm.errors import NonFiniteError, check_finite
from tlcm.generate import GenerationSettings, generate
from tlcm.lora import LoraFile, LoraModule, load_lora, save_lora
from tlcm.sampling import sample_tlcm
from tlcm.scheduler import TLCMScheduler
from tlcm.testing.build import build_tiny_sdxl

NAN, INF = float("nan"), float("inf")
SIGMAS = torch.tensor([14.6147, 1.6129, 0.3977, 0.0])


def test_the_error_is_both_a_floating_point_and_a_value_error():
    assert issubclass(NonFiniteError, FloatingPointError) and issubclass(NonFiniteError, ValueError)


@pytest.mark.parametrize("values", [[1.0, NAN], [INF, 1.0], [-INF, 2.0], [INF, -INF]],
                         ids=["nan", "inf", "-inf", "inf-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_check_finite_catches_every_non_finite_value(values, dtype):
    x = torch.zeros(4, 64, dtype=dtype)
    x[1, 3], x[2, 7] = values
    with pytest.raises(NonFiniteError, match="the thing holds NaN or Inf values: try again"):
        check_finite(x, "the thing", "try again")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_check_finite_accepts_huge_finite_values_whose_sum_overflows(dtype):
    check_finite(torch.full((8, 8), torch.finfo(dtype).max, dtype=dtype), "x")
    check_finite(torch.tensor([torch.finfo(dtype).max, -torch.finfo(dtype).max], dtype=dtype), "x")


def nan_at(step: int):
    """A k-diffusion denoiser that returns zeros until call ``step`` (0-based), then NaN."""
    calls = []

    def model(x, sigma):
        calls.append(sigma)
        return torch.full_like(x, NAN) if len(calls) == step + 1 else torch.zeros_like(x)
    return model, calls


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("step", [0, 1, 2])
def test_sampler_stops_at_the_first_non_finite_latent(step, eta):
    model, calls = nan_at(step)
    seen = []
    with pytest.raises(NonFiniteError, match=rf"latent after TLCM step {step + 1} of 3 .*bfloat16"):
        sample_tlcm(model, torch.randn(2, 4, 8, 8), SIGMAS, callback=lambda d: seen.append(d["i"]), disable=True,
                    eta=eta)
    assert len(calls) == step + 1 and seen == list(range(step + 1))      # no further model call


def test_sampler_checks_noise_from_the_host_too():
    """An Inf from the host's noise sampler (or start latent) is caught at the step it enters."""
    inf_noise = lambda s, s_next: torch.full((1, 4, 2, 2), INF)       # noqa: E731
    with pytest.raises(NonFiniteError, match="step 1 of 3"):
        sample_tlcm(lambda x, s: torch.zeros_like(x), torch.randn(1, 4, 2, 2), SIGMAS, disable=True,
                    noise_sampler=inf_noise)


@pytest.mark.parametrize("bad_step", [0, 3])
def test_scheduler_step_raises_on_a_non_finite_result(bad_step):
    scheduler = TLCMScheduler()
    scheduler.set_timesteps(4)
    sample, generator = torch.randn(1, 4, 8, 8), torch.Generator().manual_seed(0)
    for i, t in enumerate(scheduler.timesteps):
        output = torch.full_like(sample, INF) if i == bad_step else torch.zeros_like(sample)
        if i == bad_step:
            with pytest.raises(NonFiniteError, match=rf"latent after TLCM step {bad_step + 1} of 4"):
                scheduler.step(output, t, sample, generator=generator)
            return
        sample = scheduler.step(output, t, sample, generator=generator).prev_sample


@contextlib.contextmanager
def output_replaced(module: torch.nn.Module, value: float, call: int = 0):
    """Module ``module`` returns ``value`` everywhere from its ``call``-th forward on."""
    calls = []

    def hook(mod, args, output):
        calls.append(1)
        if len(calls) <= call:
            return output
        if isinstance(output, tuple):
            return (torch.full_like(output[0], value), *output[1:])
        return torch.full_like(output, value)
    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture
def pipe(tiny_pipe):
    return StableDiffusionXLPipeline(**tiny_pipe.components)


def settings(**kw):
    return GenerationSettings(**{"prompt": "a blue square", "width": 64, "height": 64, "steps": 4, **kw})


def test_generate_stops_at_a_nan_unet_output(pipe):
    with output_replaced(pipe.unet, NAN, call=2) as calls, pytest.raises(NonFiniteError, match="step 3 of 4"):
        generate(pipe, settings())
    assert len(calls) == 3


def test_generate_refuses_a_nan_decoded_image(pipe):
    with output_replaced(pipe.vae.decoder, NAN), pytest.raises(NonFiniteError, match="decoded image .*VAE"):
        generate(pipe, settings(steps=2))
    assert len(generate(pipe, settings(steps=2))) == 1            # the hook is gone: images again


def test_nan_in_a_lora_names_the_tensor_and_file(tmp_path):
    name = "mid_block.attentions.0.proj_in"
    good = LoraFile({name: LoraModule(torch.randn(2, 8), torch.randn(8, 2), 3.0)}, "test")
    path = save_lora(good, tmp_path / "k.safetensors", "kohya")
    assert load_lora(path).modules[name.replace(".", "_")].scale == 1.5
    key = "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"
    for bad in (NAN, INF, -INF):
        state = {**load_file(str(path)), key: torch.tensor([[bad, 0.0]] * 8)}
        save_file(state, str(tmp_path / "bad.safetensors"))
        with pytest.raises(NonFiniteError, match=rf"{tmp_path / 'bad.safetensors'}: tensor '{key}' holds NaN or Inf"):
            load_lora(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="alpha must be a positive finite number, got nan"):
        load_lora(path, alpha=NAN)


def test_cli_generate_exits_2_with_one_line_on_nan(kit_dir, tmp_path, capsys):
    """A LoRA whose merge overflows (finite in the file, Inf in the weights) yields NaN latents: exit 2, no PNG."""
    kit = build_tiny_sdxl(kit_dir / "kit-seed0", seed=0)
    name = "mid_block.attentions.0.proj_in"
    width = json.loads((kit.diffusers / "unet" / "config.json").read_text())["block_out_channels"][-1]
    huge = LoraFile({name: LoraModule(torch.full((2, width), 1e20), torch.full((width, 2), 1e20), 2.0)}, "test")
    lora = save_lora(huge, tmp_path / "huge.safetensors", "kohya")
    code = main(["generate", "--model", str(kit.diffusers), "--lora", str(lora), "--prompt", "x", "--steps", "2",
                 "--width", "64", "--height", "64", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    ours = [line for line in err.splitlines() if line.startswith("tlcm:")]
    assert len(ours) == 1 and err.rstrip().endswith(ours[0]) and "NaN or Inf" in ours[0]
    assert "Traceback" not in err and not list(tmp_path.glob("out/*.png"))
