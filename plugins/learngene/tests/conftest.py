"""Fixtures of the stitchframe-learngene tests: a toy ViT adapter, digits data, registries.

No network, fixed seeds and the gpu marker come from ``stitchframe.testing.pytest_plugin``
(enabled in pyproject's addopts).
"""

from __future__ import annotations

import pytest
import stitchframe_learngene
import torch
from _learngene_cases import ToyPlugin

import stitchframe


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def regs():
    """Built-ins, the timm plugin, this plugin and the toy test plugin (entry points off)."""
    import stitchframe_timm

    pm = stitchframe.get_plugin_manager(load_entrypoints=False)
    pm.register_plugin(stitchframe_timm, name="timm")
    pm.register_plugin(stitchframe_learngene, name="learngene")
    pm.register_plugin(ToyPlugin, name="toy")
    return stitchframe.load_registries(pm)
