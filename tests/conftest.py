"""Shared fixtures: the tiny seeded SDXL kit, built once per test session (seconds, offline)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory):
    """A session-wide scratch folder for kit artefacts (tokenizer files, saved models)."""
    return tmp_path_factory.mktemp("tiny_kit")


@pytest.fixture(scope="session")
def tiny_pipe(kit_dir):
    """In-memory tiny ``StableDiffusionXLPipeline`` (fp32, CPU). Tests must not mutate its weights."""
    from tlcm.testing.tiny import tiny_sdxl_pipeline
    return tiny_sdxl_pipeline(kit_dir, seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls only lose from intra-op threads on a shared CPU (seen 4x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
