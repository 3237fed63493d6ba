"""The docs' example scripts run as written (each in a scratch copy of examples/)."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


SCRIPTS = ["quickstart.py", "inspect_graph.py", "choose_route.py", "export_route.py", "train_and_evaluate.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(tmp_path / script), run_name="__main__")
    out = capsys.readouterr().out
    assert out or script == "export_route.py"
    if script == "quickstart.py":
        assert out.startswith("25 routes") and (tmp_path / "route.safetensors").is_file()
    if script == "export_route.py":
        assert {"route.safetensors", "route.pt2", "route.onnx"} <= {p.name for p in tmp_path.iterdir()}
        assert sorted(p.name for p in (tmp_path / "deploy").iterdir()) == ["route.json", "route.safetensors"]
    if script == "choose_route.py":
        assert "No route fits max_flops=1000000.0" in out
