"""Offline fail-fast for Hub loads (stitchframe.hub)."""

from __future__ import annotations

import os
import socket
import sys
import types

import pytest

from stitchframe import hub


@pytest.fixture
def fake_hub(monkeypatch):
    """A stand-in huggingface_hub.constants, the variables unset and no remembered probe."""
    constants = types.SimpleNamespace(HF_HUB_OFFLINE=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", constants)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(constants=constants))
    for var in (*hub.HUB_OFFLINE_VARIABLES, "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    hub._probed.clear()
    yield constants
    hub._probed.clear()


def test_blocked_network_switches_offline_mode_on_for_the_block(fake_hub):
    assert not hub.hub_reachable()  # the test suite's socket fixture refuses connections
    with hub.hub_offline_mode() as offline:
        assert offline and fake_hub.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
    assert fake_hub.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_the_variable_is_honoured_without_a_probe(fake_hub, monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed although offline was asked"))
    with hub.hub_offline_mode() as offline:
        assert offline and fake_hub.HF_HUB_OFFLINE is True


def test_a_reachable_hub_and_local_loads_change_nothing(fake_hub, monkeypatch):
    calls = []

    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(socket, "create_connection", lambda addr, timeout: calls.append(addr) or Conn())
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443")
    with hub.hub_offline_mode() as offline:
        assert not offline and fake_hub.HF_HUB_OFFLINE is False
    with hub.hub_offline_mode():
        pass
    assert calls == [("hub.example.org", 8443)]  # probed once, then remembered
    with hub.hub_offline_mode(enabled=False) as offline:
        assert not offline


def test_behind_a_proxy_no_probe_is_made(fake_hub, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub.hub_reachable()
