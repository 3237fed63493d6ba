"""Fixtures of the stitchframe-dery tests: tiny zoos and registries with the plugin.

The zoos are the core's tiny test models (``tests/tiny.py`` at the repository root: TinyCNN and TinyViT)
and tiny randomly initialised timm models (``_dery_cases.py``).  Nothing is downloaded.  No network,
fixed seeds and the gpu marker come from ``stitchframe.testing.pytest_plugin`` (enabled in pyproject's
addopts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[3]
if (_ROOT / "tests" / "tiny.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # the core's tiny models, shared with the core tests

import stitchframe_dery

import stitchframe
from tests import tiny


@pytest.fixture(scope="session")
def dery_regs():
    """Registries with the built-ins, this plugin and the core's ``tiny:`` test adapter (entry points off)."""
    pm = stitchframe.get_plugin_manager(load_entrypoints=False)
    pm.register_plugin(stitchframe_dery, name="dery")
    pm.register_plugin(tiny.TinyPlugin, name="tiny")
    return stitchframe.load_registries(pm)


@pytest.fixture(scope="session")
def mixed_zoo():
    """A tiny CNN (feature maps) and two tiny ViTs (tokens with a class token), 16x16 inputs, 10 classes."""
    return [
        tiny.cnn_anchor(tiny.tiny_cnn(16, seed=0), "cnn16"),
        tiny.vit_anchor(tiny.tiny_vit(32, 4, seed=1), "vit32"),
        tiny.vit_anchor(tiny.tiny_vit(48, 4, seed=2), "vit48"),
    ]


@pytest.fixture(scope="session")
def probe():
    """Two batches of eight random 16x16 images."""
    return [tiny.images(8, seed=10), tiny.images(8, seed=11)]
