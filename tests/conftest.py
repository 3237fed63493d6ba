from __future__ import annotations

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import stitchframe  # noqa: E402
from tests import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never reach the network: outbound connections fail."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    connect = socket.socket.connect

    def connect_local_only(self, *args, **kwargs):
        # Unix sockets are local IPC (DataLoader workers use them), not network.
        if getattr(socket, "AF_UNIX", None) is not None and self.family == socket.AF_UNIX:
            return connect(self, *args, **kwargs)
        refuse()

    monkeypatch.setattr(socket.socket, "connect", connect_local_only)
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
