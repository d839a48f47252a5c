"""Damaged and hostile inputs for every loader: each must end in a clear error of an expected type naming the
file, never a silent success and never a leaked KeyError/IndexError/RuntimeError/SafetensorError/JSONDecodeError.

Files: LoRAs (safetensors, tensor-only pickles, PEFT folders), adapter_config.json, SDXL model folders and
single files, the PEA adapter, prompt files. Mutations are seeded, so a failure reproduces exactly.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tlcm.chinese import load_adapter, load_text_tower
from tlcm.cli import main
from tlcm.errors import NonFiniteError
from tlcm.lora import LoraFile, LoraModule, load_lora, save_lora
from tlcm.models import load_sdxl_pipeline
from tlcm.testing.build import build_tiny_sdxl
from tlcm.testing.chinese import save_tiny_chinese_clip, save_tiny_pea_adapter
from tlcm_train.prompts import PromptFileError, read_prompts

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234
# Exact types, not isinstance: JSONDecodeError and UnicodeDecodeError are ValueErrors too, but leaking them
# means a message that does not say which file or what to do.
EXPECTED = {ValueError, FileNotFoundError, NonFiniteError, PromptFileError}
KOHYA_KEYS = ("lora_unet_mid_block_attentions_0_proj_in", "lora_unet_down_blocks_1_resnets_0_conv1")


def assert_clear_error(load: Callable[[], object], path: Path) -> BaseException:
    """``load()`` raises one of EXPECTED, naming ``path``."""
    try:
        result = load()
    except Exception as err:     # noqa: BLE001 - the point is to see every type
        assert type(err) in EXPECTED, f"{path.name}: leaked {type(err).__name__}: {err}"
        assert str(path) in str(err), f"the error does not name {path}: {err}"
        return err
    pytest.fail(f"{path.name}: loaded without an error: {result!r}")


def kohya_state(rank: int = 2, alpha: float = 3.0) -> dict[str, torch.Tensor]:
    """A small, valid kohya LoRA (alpha != rank, so a lost alpha would change the scale)."""
    gen = torch.Generator().manual_seed(SEED)
    state = {}
    for key, (out, inp, conv) in zip(KOHYA_KEYS, ((8, 8, False), (8, 4, True))):
        tail = (3, 3) if conv else ()
        state[f"{key}.lora_down.weight"] = torch.randn(rank, inp, *tail, generator=gen)
        state[f"{key}.lora_up.weight"] = torch.randn(out, rank, *((1, 1) if conv else ()), generator=gen)
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    """One valid file of each kind; every test damages a copy."""
    root = tmp_path_factory.mktemp("valid")
    save_file(kohya_state(), str(root / "kohya.safetensors"))
    torch.save(kohya_state(), root / "kohya.pt")
    lora = LoraFile({"mid_block.attentions.0.proj_in": LoraModule(torch.randn(2, 8), torch.randn(8, 2), 3.0)}, "t")
    save_lora(lora, root / "peft", "peft")
    (root / "prompts.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog on a hill"}\n')
    (root / "prompts.csv").write_text('prompt,seed\n"a cat, sitting",1\n"a dog",2\n')
    return {"kohya": root / "kohya.safetensors", "pt": root / "kohya.pt", "peft": root / "peft",
            "jsonl": root / "prompts.jsonl", "csv": root / "prompts.csv"}


def test_the_valid_files_load(valid):
    """Guards the fuzz below: its base files are good, so each failure comes from the damage."""
    for key in ("kohya", "pt"):
        assert {m.scale for m in load_lora(valid[key]).modules.values()} == {1.5}
    assert {m.scale for m in load_lora(valid["peft"]).modules.values()} == {1.5}
    assert read_prompts([valid["jsonl"], valid["csv"]]) == ["a cat", "a dog on a hill", "a cat, sitting", "a dog"]


# ---- LoRA files: bytes ------------------------------------------------------------------------------------

def header_span(data: bytes) -> tuple[int, int]:
    """(start, end) of a safetensors header's JSON, without its trailing padding."""
    (length,) = struct.unpack("<Q", data[:8])
    return 8, 8 + len(data[8:8 + length].rstrip(b" "))


def byte_cases(valid: dict[str, Path]) -> list[tuple[str, str, bytes]]:
    """(case id, suffix, content): truncations, header damage, random bytes; all seeded."""
    rng = random.Random(SEED)
    st, pt = valid["kohya"].read_bytes(), valid["pt"].read_bytes()
    start, end = header_span(st)
    cases = [("empty", ".safetensors", b""), ("empty", ".pt", b""), ("seven-bytes", ".safetensors", b"\x01" * 7),
             ("header-2**60", ".safetensors", struct.pack("<Q", 2 ** 60) + st[8:]),
             ("header-past-end", ".safetensors", struct.pack("<Q", len(st)) + st[8:]),
             ("header-zero", ".safetensors", struct.pack("<Q", 0) + st[8:]),
             ("header-not-json", ".safetensors", struct.pack("<Q", 16) + b"\xff\xfe{not json}!!!" + st[end:]),
             ("header-json-list", ".safetensors", struct.pack("<Q", 8) + b"[1,2,3] "),
             ("data-missing", ".safetensors", st[:end])]
    for i in range(12):
        cut = rng.randrange(1, len(st))
        cases.append((f"cut-{i}-at-{cut}", ".safetensors", st[:cut]))
    for i in range(8):
        cut = rng.randrange(1, len(pt))
        cases.append((f"cut-{i}-at-{cut}", ".pt", pt[:cut]))
    for i in range(16):                            # one header byte replaced by a printable non-space character
        at = rng.randrange(start, end)
        new = rng.choice([c for c in range(33, 127) if c != st[at]])
        cases.append((f"header-byte-{at}-to-{chr(new)}", ".safetensors", st[:at] + bytes([new]) + st[at + 1:]))
    for i, size in enumerate((1, 8, 64, 4096)):
        blob = rng.randbytes(size)
        cases += [(f"random-{size}", ".safetensors", blob), (f"random-{size}", ".pt", blob),
                  (f"random-{size}", ".bin", blob)]
    return cases


def test_damaged_lora_bytes_are_clear_errors(valid, tmp_path):
    cases = byte_cases(valid)
    assert len(cases) == 57
    for name, suffix, content in cases:
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(content)
        assert_clear_error(lambda: load_lora(path), path)


DOWN = f"{KOHYA_KEYS[0]}.lora_down.weight"
UP = f"{KOHYA_KEYS[0]}.lora_up.weight"
ALPHA = f"{KOHYA_KEYS[0]}.alpha"
TENSOR_CASES = {
    "int-down": ({DOWN: torch.ones(2, 8, dtype=torch.int64)}, "dtype int64"),
    "int32-up": ({UP: torch.ones(8, 2, dtype=torch.int32)}, "dtype int32"),
    "bool-down": ({DOWN: torch.ones(2, 8, dtype=torch.bool)}, "dtype bool"),
    "bool-alpha": ({ALPHA: torch.tensor(True)}, "single real number"),
    "vector-alpha": ({ALPHA: torch.ones(3)}, "single real number"),
    "nan-down": ({DOWN: torch.full((2, 8), float("nan"))}, "NaN or Inf"),
    "inf-up": ({UP: torch.tensor([[float("inf"), 0.0]] * 8)}, "NaN or Inf"),
    "nan-alpha": ({ALPHA: torch.tensor(float("nan"))}, "NaN or Inf"),
    "rank-mismatch": ({UP: torch.ones(8, 3)}, "does not fit down"),
    "one-d": ({DOWN: torch.ones(8), UP: torch.ones(8)}, "2-D"),
    "zero-d": ({DOWN: torch.tensor(1.0), UP: torch.tensor(1.0)}, "2-D"),
    "rank-zero": ({DOWN: torch.ones(0, 8), UP: torch.ones(8, 0)}, "empty"),
    "conv-up-kernel": ({f"{KOHYA_KEYS[1]}.lora_up.weight": torch.ones(8, 2, 3, 3)}, "does not fit down"),
    "half-module": ({UP: None}, "has no up tensor"),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_wrong_tensors_are_clear_errors_naming_the_tensor(tmp_path, case, suffix):
    changes, message = TENSOR_CASES[case]
    state = {k: v for k, v in {**kohya_state(), **changes}.items() if v is not None}
    path = tmp_path / f"{case}{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    err = assert_clear_error(lambda: load_lora(path), path)
    assert message in str(err)
    if "NaN" in message:
        assert isinstance(err, NonFiniteError) and next(iter(changes)) in str(err)    # names the tensor


def test_directories_where_files_are_expected(valid, tmp_path):
    as_dir = tmp_path / "lora.safetensors"
    as_dir.mkdir()
    assert_clear_error(lambda: load_lora(as_dir), as_dir)
    peft = tmp_path / "peft"
    shutil.copytree(valid["peft"], peft)
    (peft / "adapter_model.safetensors").unlink()
    (peft / "adapter_model.safetensors").mkdir()
    assert_clear_error(lambda: load_lora(peft), peft)
    shutil.rmtree(peft)
    shutil.copytree(valid["peft"], peft)
    (peft / "adapter_config.json").unlink()
    (peft / "adapter_config.json").mkdir()
    assert_clear_error(lambda: load_lora(peft), peft / "adapter_config.json")


def test_unknown_formats_are_clear_errors(valid, tmp_path):
    for name in ("lora.txt", "lora", "lora.gguf", "lora.SAFETENSOR"):
        path = tmp_path / name
        path.write_bytes(valid["kohya"].read_bytes())
        assert_clear_error(lambda: load_lora(path), path)


# ---- adapter_config.json ----------------------------------------------------------------------------------

CONFIG_CASES = {       # field -> bad value; each must be an error naming the file and the field
    "r": ["64", 0, -4, 2.5, True, None, [2]],
    "lora_alpha": [[1], "3", 0, -3, float("nan"), float("inf"), False, {"a": 1}],
    "rank_pattern": [[1], "x", {"(": 2}, {"proj_in": "2"}, {"proj_in": 0}],
    "alpha_pattern": [{"proj_in": [3]}, {"proj_in": -1}, {"[": 3.0}, 7],
    "use_rslora": ["false", 1, [True]],
    "use_dora": ["no"],
    "target_modules": [5, [1, 2], {"a": "b"}],
}


def _config_folder(valid: dict[str, Path], root: Path, name: str, text: str | bytes) -> Path:
    folder = root / name
    shutil.copytree(valid["peft"], folder)
    config = folder / "adapter_config.json"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def test_malformed_config_fields_name_file_and_field(valid, tmp_path):
    base = json.loads((valid["peft"] / "adapter_config.json").read_text())
    count = 0
    for field, values in CONFIG_CASES.items():
        for i, value in enumerate(values):
            folder = _config_folder(valid, tmp_path, f"{field}-{i}", json.dumps({**base, field: value}))
            err = assert_clear_error(lambda: load_lora(folder), folder / "adapter_config.json")
            assert f"field {field}" in str(err), err
            count += 1
    assert count == sum(map(len, CONFIG_CASES.values()))


def test_garbled_config_files_are_errors_not_default_alpha(valid, tmp_path):
    text = (valid["peft"] / "adapter_config.json").read_text()
    rng = random.Random(SEED)
    garbage = {"empty": "", "not-json": "{r: 2", "list": "[1, 2]", "string": '"adapter"', "object": "{}",
               "nested": "[" * 100_000, "random-bytes": b"\xff" + rng.randbytes(200), "nan-literal": "NaN"}
    garbage.update({f"cut-{cut}": text[:cut] for cut in sorted(rng.sample(range(1, len(text)), 10))})
    for name, content in garbage.items():
        folder = _config_folder(valid, tmp_path, name, content)
        assert_clear_error(lambda: load_lora(folder), folder / "adapter_config.json")
    huge = _config_folder(valid, tmp_path, "huge", text + " " * (1 << 20))
    assert_clear_error(lambda: load_lora(huge), huge / "adapter_config.json")


def test_explicit_config_path_is_checked_too(valid, tmp_path):
    config = tmp_path / "my_config.json"
    config.write_text(json.dumps({"r": "2", "target_modules": ["proj_in"]}))
    err = assert_clear_error(lambda: load_lora(valid["peft"], config=config), config)
    assert "field r must be a positive integer" in str(err)
    assert_clear_error(lambda: load_lora(valid["peft"], config=tmp_path / "missing.json"), tmp_path / "missing.json")


# ---- model folders and single files -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def kit(kit_dir):
    return build_tiny_sdxl(kit_dir / "kit-seed0", seed=0)   # shared with test_models.py through the manifest


def _unet_weights(folder: Path) -> Path:
    return folder / "unet" / "diffusion_pytorch_model.safetensors"


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.unlink()                                   # a new file: never write through to the shared kit
    path.write_bytes(data[:keep])


def _replace(path: Path, content: bytes) -> None:
    path.unlink()
    path.write_bytes(content)


def _entry(index: Path, key: str, value) -> None:
    data = json.loads(index.read_text())
    _replace(index, json.dumps({**data, key: value}).encode())


def _remove_files(folder: Path) -> None:
    for item in folder.iterdir():
        item.unlink()


FOLDER_DAMAGE = {
    "index-missing": lambda d: (d / "model_index.json").unlink(),
    "index-random-bytes": lambda d: _replace(d / "model_index.json", b"\xff" + random.Random(SEED).randbytes(99)),
    "index-truncated": lambda d: _truncate(d / "model_index.json", 40),
    "index-list": lambda d: _replace(d / "model_index.json", b"[1, 2]"),
    "index-entry-int": lambda d: _entry(d / "model_index.json", "text_encoder", 5),
    "index-is-folder": lambda d: ((d / "model_index.json").unlink(), (d / "model_index.json").mkdir()),
    "vae-folder-missing": lambda d: shutil.rmtree(d / "vae"),
    "unet-truncated": lambda d: _truncate(_unet_weights(d), 5_000),
    "unet-header-2**60": lambda d: _replace(_unet_weights(d), struct.pack("<Q", 2 ** 60) + b"{}"),
    "unet-random-bytes": lambda d: _replace(_unet_weights(d), random.Random(SEED).randbytes(4096)),
    "unet-empty": lambda d: _replace(_unet_weights(d), b""),
    "unet-weights-missing": lambda d: _unet_weights(d).unlink(),
    "unet-config-garbage": lambda d: _replace(d / "unet" / "config.json", b"{not json"),
    "tokenizer-files-missing": lambda d: _remove_files(d / "tokenizer"),
}


def test_damaged_model_folders_are_clear_errors(kit, tmp_path):
    for name, damage in FOLDER_DAMAGE.items():
        folder = tmp_path / name
        shutil.copytree(kit.diffusers, folder)
        damage(folder)
        assert_clear_error(lambda: load_sdxl_pipeline(folder, device="cpu"), folder)


def test_damaged_single_files_are_clear_errors(kit, tmp_path):
    data = kit.checkpoint.read_bytes()
    rng = random.Random(SEED)
    cases = {"empty": b"", "cut-header": data[:100], "cut-data": data[: len(data) // 2],
             "header-2**60": struct.pack("<Q", 2 ** 60) + data[8:], "random": rng.randbytes(4096)}
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        assert_clear_error(lambda: load_sdxl_pipeline(path, device="cpu"), path)


# ---- PEA adapter and prompt files -------------------------------------------------------------------------

def test_damaged_pea_adapters_are_clear_errors(tmp_path):
    good = save_tiny_pea_adapter(tmp_path / "good.safetensors")
    state = load_file(str(good))
    rng = random.Random(SEED)
    broken = {"nan": {**state, "fc.bias": torch.full_like(state["fc.bias"], float("nan"))},
              "int": {**state, "fc.weight": state["fc.weight"].to(torch.int32)},
              "one-d": {**state, "projector.0.weight": state["projector.0.weight"].flatten()},
              "fc-bias-shape": {**state, "fc.bias": torch.zeros(3)},
              "missing-fc": {k: v for k, v in state.items() if not k.startswith("fc.")}}
    for name, tensors in broken.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        assert_clear_error(lambda: load_adapter(path), path)
    for name, content in {"cut": good.read_bytes()[:200], "random": rng.randbytes(512), "empty": b""}.items():
        for suffix in (".safetensors", ".bin"):
            path = tmp_path / f"{name}{suffix}"
            path.write_bytes(content)
            assert_clear_error(lambda: load_adapter(path), path)


def test_damaged_chinese_text_models_are_clear_errors(tmp_path):
    good = save_tiny_chinese_clip(tmp_path / "good")
    weights = good / "model.safetensors"
    damage = {"config-garbage": lambda d: _replace(d / "config.json", b"{model_type"),
              "config-list": lambda d: _replace(d / "config.json", b"[]"),
              "weights-cut": lambda d: _truncate(d / "model.safetensors", weights.stat().st_size // 2),
              "weights-folder": lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors").mkdir()),
              "weights-nan": lambda d: save_file({k: torch.full_like(v, float("nan")) for k, v in
                                                  load_file(str(weights)).items()}, str(d / "model.safetensors"))}
    for name, make in damage.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        make(folder)
        assert_clear_error(lambda: load_text_tower(folder), folder)


def test_damaged_prompt_files_are_clear_errors(valid, tmp_path):
    rng = random.Random(SEED)
    jsonl = valid["jsonl"].read_text()
    cases = {"empty.txt": "", "blank.txt": "  \n\n\t\n", "random.txt": b"\xff\xfe" + rng.randbytes(300),
             "random.csv": b"\xc3\x28" + rng.randbytes(300), "cut.jsonl": jsonl[: jsonl.index("dog")],
             "number.jsonl": '{"prompt": 5}\n', "no-field.jsonl": '{"seed": 1}\n', "nested.jsonl": "[" * 100_000,
             "no-header.csv": "a cat\na dog\n", "huge-field.csv": "prompt\n" + "x" * 200_000 + '"',
             "notes.md": "a cat\n"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        assert_clear_error(lambda: read_prompts([path]), path)
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    assert_clear_error(lambda: read_prompts([folder]), folder)
    assert_clear_error(lambda: read_prompts([tmp_path / "missing.txt"]), tmp_path / "missing.txt")


# ---- the command line -------------------------------------------------------------------------------------

def test_cli_reports_damaged_files_in_one_line(valid, tmp_path):
    """The real ``tlcm`` process: exit code 2 and one ``tlcm: ...`` line naming the file, no traceback."""
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(valid["kohya"].read_bytes()[:300])
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline", ')
    runs = {cut: ["lora", "inspect", str(cut)],
            model / "model_index.json": ["generate", "--model", str(model), "--prompt", "x", "--width", "64",
                                         "--height", "64", "--out", str(tmp_path / "out")]}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {path: subprocess.Popen([sys.executable, "-m", "tlcm", *argv], cwd=tmp_path, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for path, argv in runs.items()}
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tlcm: ") and str(path) in lines[0], err
        assert "Traceback" not in err + out
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_malformed_config_in_one_line(valid, tmp_path, capsys):
    base = json.loads((valid["peft"] / "adapter_config.json").read_text())
    folder = _config_folder(valid, tmp_path, "bad-config", json.dumps({**base, "lora_alpha": [1]}))
    assert main(["lora", "convert", str(folder), str(tmp_path / "o.safetensors"), "--to", "kohya"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tlcm: {folder / 'adapter_config.json'}: field lora_alpha must be") and err.count("\n") == 1
    assert not (tmp_path / "o.safetensors").exists()
