from __future__ import annotations

import socket

import pytest
import torch
from stitchframe_torchvision import MobileNetOptions, load_mobilenet


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never download weights: outbound connections fail."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def family():
    """MobileNetV3 small and large, randomly initialised, traced at 64x64."""
    torch.manual_seed(0)
    small = MobileNetOptions(img_size=64)
    return [load_mobilenet("mobilenet_v3_small", small), load_mobilenet("mobilenet_v3_large", small)]
