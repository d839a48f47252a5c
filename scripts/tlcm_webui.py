"""WebUI entry point (A1111 / Forge / reForge load every ``scripts/*.py`` of an extension).

Registers the TLCM sampler and scheduler (idempotent: "Reload UI" runs this file again), warns about LoRA
files the WebUI cannot apply, and exposes ``TLCMScript`` (the "TLCM" accordion) for the host to collect.
Outside a WebUI (no ``modules.scripts``) importing this file does nothing.
"""
import importlib.util
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def _load_package(name: str) -> None:
    """Import the extension's package ``name`` from its folder, without putting the extension folder on
    ``sys.path`` (that would also expose ``tlcm_train``, ``tlcm_toy``, ``bench``, ``tests``, ``install`` and ``run`` as
    top-level modules of the WebUI's process). An already imported ``name`` (e.g. pip-installed) is kept."""
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, _ROOT / name / "__init__.py",
                                                  submodule_search_locations=[str(_ROOT / name)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


for _package in ("tlcm", "webui_tlcm"):
    _load_package(_package)

try:
    from modules import scripts as _host_scripts
except ImportError:
    _host_scripts = None

if _host_scripts is not None:
    from webui_tlcm.registration import register_with_webui
    from webui_tlcm.script import TLCMScript, lora_dir, report
    from webui_tlcm import lora_folder

    __all__ = ["TLCMScript"]         # the WebUI collects Script subclasses from this module

    for _added in register_with_webui():
        print(f"[TLCM] registered {_added}", file=sys.stderr)
    for _item in lora_folder.scan(lora_dir()):
        if not _item.is_converted:
            report(None, lora_folder.warning_text(_item))
