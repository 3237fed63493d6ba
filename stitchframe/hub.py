"""Failing fast without a network, for plugins that load from the Hugging Face Hub.

``huggingface_hub`` retries a download it cannot start (five times, with
waits of 1 to 8 s, then once more with a 60 s metadata timeout), so an offline
machine spends about a minute before the error.  In offline mode
(``HF_HUB_OFFLINE=1``) it looks in its local cache only and fails at once.
:func:`hub_offline_mode` switches that mode on around a load when the
environment asks for it or when a quick connection probe to the Hub fails,
so cached files still load and a missing one fails in well under a second.

This module imports nothing heavy; it imports ``huggingface_hub.constants``
(installed with timm and transformers) only when offline mode is needed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

__all__ = ["HUB_OFFLINE_VARIABLES", "hub_offline_mode", "hub_reachable", "offline_requested"]

#: Environment variables that ask for offline mode (any true value: ``1``, ``true``, ``yes``, ``on``).
HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_DEFAULT_ENDPOINT = "https://huggingface.co"
_CACHE_SECONDS = 60.0
_probed: dict[tuple[str, int], tuple[float, bool]] = {}


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    return any(_is_true(os.environ.get(v)) for v in HUB_OFFLINE_VARIABLES)


def hub_reachable(endpoint: str | None = None, *, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host opens within ``timeout`` seconds.

    The endpoint defaults to ``HF_ENDPOINT`` or ``https://huggingface.co``.
    Behind a proxy (``HTTPS_PROXY``/``ALL_PROXY`` set) no probe is made and
    the answer is ``True``: the Hub library goes through the proxy itself.
    Results are remembered for a minute per host.
    """
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    url = urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    now = time.monotonic()
    cached = _probed.get((host, port))
    if cached is not None and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:  # no route, no DNS, refused, timed out
        ok = False
    _probed[(host, port)] = (now, ok)
    return ok


@contextlib.contextmanager
def hub_offline_mode(enabled: bool = True, *, timeout: float = 3.0) -> Iterator[bool]:
    """Put ``huggingface_hub`` in offline mode for the block when the Hub cannot be used.

    Offline mode is switched on when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``
    asks for it or when :func:`hub_reachable` fails; files already in the
    local cache still load, anything else fails at once instead of after
    about a minute of retries.  The previous mode is restored afterwards.
    Use it around every call that may reach the Hub (``timm.create_model(...,
    pretrained=True)``, ``from_pretrained`` of a Hub name)::

        with stitchframe.hub_offline_mode(enabled=options.pretrained) as offline:
            model = timm.create_model(name, pretrained=options.pretrained)

    Args:
        enabled: ``False`` makes the block a no-op (a load from local files
            needs no probe).
        timeout: Seconds the connection probe may take.

    Yields:
        ``True`` when the block runs in offline mode (say so in the error
        message of a failed load).
    """
    offline = enabled and (offline_requested() or not hub_reachable(timeout=timeout))
    if not offline:
        yield False
        return
    try:
        import huggingface_hub.constants as constants  # cheap; installed with timm and transformers
    except ImportError:
        constants = None
    previous = constants.HF_HUB_OFFLINE if constants is not None else None
    previous_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # for code that reads the variable at call time
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = previous
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env
