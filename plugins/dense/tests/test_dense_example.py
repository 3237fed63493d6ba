"""The example script runs on its example spec (a few steps)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_example_segments_with_every_route(tmp_path, monkeypatch):
    if not importlib.metadata.entry_points(group="stitchframe", name="timm"):  # the timm plugin is not installed
        monkeypatch.setenv("STITCHFRAME_PLUGINS", "stitchframe_timm")  # but importable (a source checkout)
    spec = importlib.util.spec_from_file_location("segment_shapes", EXAMPLES / "segment_shapes.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "miou.json"
    result = script.main(
        [
            str(EXAMPLES / "shapes_vits.yaml"),
            "--steps",
            "4",
            "--train-size",
            "64",
            "--val-size",
            "8",
            "--channels",
            "16",
            "--train-routes",
            "0",
            "2",
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["routes"] == json.loads(json.dumps(result["routes"]))
    assert len(saved["routes"]) > 2 and all(0.0 <= r["miou"] <= 1.0 for r in saved["routes"])
    assert saved["routes"][0]["route"] == "vit_narrow[0:6]"
