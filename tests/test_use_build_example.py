"""examples/use_build.py, the quickstart's Python half, runs as written on a real (tiny) build output."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import yaml

from stitchframe import cli
from tests.test_cli_build import SPEC

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "use_build.py"


def test_use_build_example_runs_on_a_build_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STITCHFRAME_LOAD_PLUGINS", "")  # only the tiny test plugin, loaded by name
    monkeypatch.setenv("STITCHFRAME_PLUGINS", "tests.tiny:TinyPlugin")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SPEC))
    assert cli.main(["build", "tiny.yaml", "--output", "out"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "out"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    printed = capsys.readouterr().out
    assert "% at " in printed and "wrote " in printed
    assert {"best.safetensors", "best.json"} <= {p.name for p in (tmp_path / "route_files").iterdir()}
    assert (tmp_path / "route.safetensors").is_file()
