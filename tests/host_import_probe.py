"""Run in a fresh process (``python tests/host_import_probe.py HOST LORA_DIR``): load the host's own modules,
then forbid diffusers, peft and accelerate, load our host code and use it; prints what was imported as JSON.

Forbidding (an import hook that refuses those names) catches an import even where the host environment
already holds the package, and the ``sys.modules`` check catches one that happened some other way.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TESTS))
FORBIDDEN = ("diffusers", "peft", "accelerate")


class Forbid(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            self.attempts.append(name)
            raise ImportError(f"{name} imported by host code")
        return None


def loaded_forbidden() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in FORBIDDEN})


def convert_with_core(lora_dir: Path) -> None:
    """PEFT -> kohya -> PEFT with the core, the path of ``tlcm lora convert`` and the hosts' LoRA handling."""
    from tlcm.lora import load_lora, match_lora, save_lora, sdxl_unet_module_names
    peft = load_lora(lora_dir / "TLCMSDXL")
    match_lora(peft, sdxl_unet_module_names())
    save_lora(peft, lora_dir / "probe-kohya.safetensors", "kohya")
    save_lora(load_lora(lora_dir / "probe-kohya.safetensors"), lora_dir / "probe-peft", "peft")


def comfyui(lora_dir: Path) -> list[str]:
    import comfy_harness
    comfy_harness.add_to_sys_path()
    from comfy.cli_args import args
    args.cpu = True
    import comfy.k_diffusion.sampling  # noqa: F401
    import comfy.lora  # noqa: F401
    import comfy.model_management  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.utils  # noqa: F401
    import folder_paths  # noqa: F401
    from comfy_api.latest import io  # noqa: F401
    forbid()
    spec = importlib.util.spec_from_file_location("comfyui-tlcm", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    import asyncio
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    convert_with_core(lora_dir)
    return [node.define_schema().node_id for node in nodes]


def webui(lora_dir: Path) -> list[str]:
    sys.path.insert(0, str(TESTS / "webui_stub"))
    from webui_stub.kdiffusion_pypi import load_k_diffusion
    load_k_diffusion()
    import modules.shared as shared
    from modules import scripts
    shared.cmd_opts.lora_dir = str(lora_dir)
    forbid()
    loaded = scripts.load_scripts([REPO / "scripts" / "tlcm_webui.py"])
    from webui_tlcm import lora_folder, script
    reports = [lora_folder.convert(item) for item in lora_folder.scan(lora_dir) if not item.is_converted]
    convert_with_core(lora_dir)
    return [cls.__name__ for cls in loaded] + reports + [script.lora_status()]


def core(lora_dir: Path) -> list[str]:
    forbid()
    import tlcm.sampling  # noqa: F401
    import tlcm.schedules
    convert_with_core(lora_dir)
    return [str(tlcm.schedules.tlcm_timesteps(4))]


HOOK = Forbid()


def forbid() -> None:
    """From here on any import of the three names fails and is recorded (test set-up may have loaded them:
    they are dropped from ``sys.modules`` so that a cached module cannot hide an import)."""
    for name in [n for n in sys.modules if n.split(".")[0] in FORBIDDEN]:
        del sys.modules[name]
    sys.meta_path.insert(0, HOOK)


if __name__ == "__main__":
    host, lora_dir = sys.argv[1], Path(sys.argv[2])
    used = {"comfyui": comfyui, "webui": webui, "core": core}[host](lora_dir)
    print(json.dumps({"used": used, "attempts": HOOK.attempts, "loaded": loaded_forbidden()}))
