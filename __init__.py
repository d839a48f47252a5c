"""ComfyUI entry point: this repository is also a ComfyUI custom-node folder.

ComfyUI imports the folder as a package under a path-derived name and calls ``comfy_entrypoint``. Plain
Python (``import tlcm``, ``pip install``) never needs this file; the guard keeps it inert outside ComfyUI.
"""
import importlib.util

if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .comfyui_tlcm import comfy_entrypoint  # noqa: F401
