"""WebUI entry point (A1111 / Forge / reForge load every ``scripts/*.py`` of an extension).

Registers the TLCM sampler and scheduler (idempotent: "Reload UI" runs this file again), warns about LoRA
files the WebUI cannot apply, and exposes ``TLCMScript`` (the "TLCM" accordion) for the host to collect.
Outside a WebUI (no ``modules.scripts``) importing this file does nothing.
"""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:           # the host puts the extension folder on sys.path only while loading
    sys.path.append(_ROOT)

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
