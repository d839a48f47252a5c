"""AUTOMATIC1111 / Forge / reForge extension for TLCM: a thin adapter over the ``tlcm`` core.

Modules that import WebUI code (``modules.*``, ``gradio``) do so only when called inside the WebUI
(``registration.register_with_webui``, ``script``); everything else is host-independent and tested
against a stand-in of the WebUI's ``modules`` package (``tests/webui_stub``).
"""
SAMPLER_NAME = "TLCM"
SCHEDULER_NAME = "tlcm"
SCHEDULER_LABEL = "TLCM"
