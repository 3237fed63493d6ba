"""Conformance checks for plugin authors.

Run these from your plugin's tests, the way pytest and Hugging Face give
plugin authors ready-made checks::

    from stitchframe.testing import check_anchor, check_stitch_layer, check_stitch_space

    def test_my_adapter():
        model = build_my_model()
        check_anchor(load_my_anchor("my_model", MyOptions()), model=model)

Each check raises :class:`ConformanceError` (an :class:`AssertionError`, so
pytest shows it as a test failure) with a one-line message saying what is
wrong, where (anchor, block, route or parameter) and how to fix it.  They run
on CPU in seconds with small models; pass small specs and tiny anchors.
"""

from __future__ import annotations

from ._anchor import check_anchor
from ._common import ConformanceError
from ._layer import check_stitch_layer
from ._plugin import check_plugin
from ._space import check_stitch_space

__all__ = ["ConformanceError", "check_anchor", "check_stitch_layer", "check_stitch_space", "check_plugin"]
