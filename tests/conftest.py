from __future__ import annotations

import pytest

import stitchframe
from tests import tiny

# network refusal, seeding and the gpu marker come from stitchframe.testing.pytest_plugin (see pyproject addopts)


@pytest.fixture
def pm():
    """A fresh plugin manager: built-ins only, no entry points."""
    return stitchframe.get_plugin_manager(load_entrypoints=False)


@pytest.fixture
def regs(pm):
    """Registries with the built-ins and the tiny test adapter."""
    pm.register_plugin(tiny.TinyPlugin, name="tiny")
    return stitchframe.load_registries(pm)


@pytest.fixture(scope="session")
def vit_family():
    """Three tiny ViTs of increasing width (depth 4)."""
    return [tiny.vit_anchor(tiny.tiny_vit(d, seed=i), f"vit{d}") for i, d in enumerate((32, 48, 64))]


@pytest.fixture(scope="session")
def cnn_family():
    """Two tiny CNNs of increasing width."""
    return [tiny.cnn_anchor(tiny.tiny_cnn(w, seed=i), f"cnn{w}") for i, w in enumerate((8, 16))]
