"""A pytest plugin with the test habits stitchframe and its plugins share.

Enable it with ``-p stitchframe.testing.pytest_plugin`` (e.g. in
``[tool.pytest.ini_options] addopts``) or ``pytest_plugins = [...]`` in your
top-level conftest.  It

* refuses outbound network connections in every test (Unix-domain sockets,
  which DataLoader workers use, still work) and sets ``HF_HUB_OFFLINE=1``;
* seeds torch's global generator with 0 before every test;
* registers the ``gpu`` marker and skips such tests when CUDA is unavailable.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outbound connections fail: tests never download weights or data."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    connect = socket.socket.connect

    def connect_local_only(self, *args, **kwargs):
        if getattr(socket, "AF_UNIX", None) is not None and self.family == socket.AF_UNIX:
            return connect(self, *args, **kwargs)
        refuse()

    monkeypatch.setattr(socket.socket, "connect", connect_local_only)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def seed_torch() -> None:
    """Every test starts from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
