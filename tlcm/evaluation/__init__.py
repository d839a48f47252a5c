"""Evaluation at the paper's scale: MSCOCO-2017 5K prompts, the Table 1 samplers, CLIP score and FID.

This is the diffusers API side (it samples with SDXL pipelines); the host code paths never import it.
Modules: ``prompts`` (the prompt list and its rule), ``samplers`` (``tlcm:N`` / ``ddim:N:CFG`` / ``lcm:N``),
``generation`` (resumable, timed image sets), ``clip_score``, ``fid``, ``weights`` (file hashes),
``report`` (JSON and the Table 1 row), ``evaluate`` (one run), ``cli`` (``tlcm eval``).
"""
