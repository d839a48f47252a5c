"""A minimal stand-in of the WebUI's ``modules`` package, for testing the TLCM extension without a WebUI.

Modelled on AUTOMATIC1111 stable-diffusion-webui v1.10.1 names and signatures, read from the sources
that keep them: Forge ``lllyasviel/stable-diffusion-webui-forge`` dfdcbab6 and reForge
``Panchovix/stable-diffusion-webui-reForge`` 3b56b268 (both forked from A1111 1.10; files
``modules/sd_samplers.py``, ``sd_samplers_common.py``, ``sd_samplers_kdiffusion.py``, ``sd_schedulers.py``,
``rng.py``, ``scripts.py``, ``processing.py``, ``infotext_utils.py``, ``api/api.py``), where Forge-only
parts (``forge_objects``, ``ForgeScheduleLinker``, ``add_sampler``) were replaced by A1111's (the plain
k-diffusion ``CompVisDenoiser``). Only the behaviour the extension relies on is reproduced, in our own
code: list/map registration, the cached sampler lookup, schedule selection (``get_sigmas``), start-noise
scaling, img2img/hires step arithmetic, the seeded RNG, script hooks and infotext. The k-diffusion code
itself is the real PyPI package (``kdiffusion_pypi``).
"""
