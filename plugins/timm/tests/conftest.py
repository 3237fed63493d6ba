"""Fixtures of the stitchframe-timm tests: registries with the plugin.

No network, fixed seeds and the gpu marker come from ``stitchframe.testing.pytest_plugin``
(enabled in pyproject's addopts).
"""

from __future__ import annotations

import pytest
import stitchframe_timm

import stitchframe


@pytest.fixture(scope="session")
def timm_regs():
    """Registries with the built-ins and this plugin, registered explicitly (entry points off)."""
    pm = stitchframe.get_plugin_manager(load_entrypoints=False)
    pm.register_plugin(stitchframe_timm, name="timm")
    return stitchframe.load_registries(pm)


@pytest.fixture(scope="session")
def load(timm_regs):
    """``load(source, name=None, **options)``: an anchor through the engine's ``load_anchor``."""

    def _load(source: str, name: str | None = None, **options):
        spec = stitchframe.AnchorSpec(source=source, name=name, options=options)
        return stitchframe.load_anchor(spec, timm_regs)

    return _load
