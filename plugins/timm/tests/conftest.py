"""Fixtures of the stitchframe-timm tests: no network, fixed seeds, registries with the plugin."""

from __future__ import annotations

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import stitchframe_timm

import stitchframe


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never reach the network: outbound connections fail."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
        spec = stitchframe.spec.AnchorSpec(source=source, name=name, options=options)
        return stitchframe.load_anchor(spec, timm_regs)

    return _load
