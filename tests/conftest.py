"""Shared fixtures: the tiny seeded SDXL kit, built once per test session (seconds, offline)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory):
    """A session-wide scratch folder for kit artefacts (tokenizer files, saved models)."""
    return tmp_path_factory.mktemp("tiny_kit")


@pytest.fixture(scope="session")
def tiny_pipe(kit_dir):
    """In-memory tiny ``StableDiffusionXLPipeline`` (fp32, CPU). Tests must not mutate its weights."""
    from tlcm.testing.tiny import tiny_sdxl_pipeline
    return tiny_sdxl_pipeline(kit_dir, seed=0)
