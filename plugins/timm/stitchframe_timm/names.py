"""timm model names, checked without importing timm or torch (``stitchframe validate``).

``stitchframe validate`` must stay fast (no torch), yet an unknown name such as
``timm:tf_efficientnet_lite9`` should fail there rather than at ``routes``.
timm registers every model with ``@register_model`` on a function of the
model's name, so the names can be read from timm's installed source files
(about 30 ms); once timm is imported, its own registry answers.  Sources
with a further prefix (``timm:hf-hub:<org>/<name>``) are Hub models and pass.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from stitchframe import UnknownNameError

__all__ = ["model_names", "check_timm_identifier"]

_REGISTERED = re.compile(r"@register_model\s*\n\s*def\s+([A-Za-z_]\w*)\s*\(")
_DEPRECATIONS = re.compile(r"register_model_deprecations\(\s*__name__\s*,\s*\{(.*?)\}\s*\)", re.S)
_KEY = re.compile(r"""['"]([\w.\-]+)['"]\s*:""")


def _from_registry(timm: Any) -> frozenset[str]:
    return frozenset(timm.list_models()) | frozenset(timm.models.get_deprecated_models())


@functools.lru_cache(maxsize=1)
def _from_sources() -> frozenset[str]:
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        return frozenset()
    names: set[str] = set()
    for path in (Path(spec.origin).parent / "models").glob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        names.update(_REGISTERED.findall(text))
        for block in _DEPRECATIONS.findall(text):
            names.update(_KEY.findall(block))
    return frozenset(names)


def model_names() -> frozenset[str]:
    """timm's model names (deprecated aliases included): its registry once timm is imported, else its sources.

    Empty when neither can be read (timm missing, or a source layout this
    scan does not know); callers then skip the check.
    """
    timm = sys.modules.get("timm")
    if timm is not None and hasattr(timm, "list_models"):
        return _from_registry(timm)
    return _from_sources()


def check_timm_identifier(identifier: str, options: Any = None) -> None:
    """Raise :class:`~stitchframe.UnknownNameError` for a name timm lacks (the ``timm`` adapter's identifier check).

    ``deit_tiny_patch16_224.fb_in1k`` is checked without its pretrained tag;
    ``hf-hub:<org>/<name>`` and other prefixed identifiers pass.
    """
    if ":" in identifier:
        return
    names = model_names()
    base = identifier.split(".", 1)[0]
    if not names or base in names:
        return
    close = difflib.get_close_matches(base, sorted(names), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "no close match"
    raise UnknownNameError(
        f"Unknown timm model {identifier!r} in source 'timm:{identifier}'; {hint}. "
        "List names with timm.list_models('pattern*'), or write 'timm:hf-hub:<org>/<name>' for a Hub model."
    )
