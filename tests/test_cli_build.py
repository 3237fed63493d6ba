"""End to end through the command line: build, routes, evaluate, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from stitchframe import CheckpointError, StitchframeError, cli, get_plugin_manager, load_registries, load_route, load_snnet
from stitchframe.io import read_metadata
from tests import tiny

PLUGIN = ["--plugin", "tests.tiny:TinyPlugin"]
SPEC = {
    "anchors": [
        "tiny:vit32",
        {"source": "tiny:vit48", "options": {"seed": 1}},
        {"source": "tiny:vit64", "options": {"seed": 2}},
    ],
    "stitch": {"space": "snnet"},
    "calibration": {"batches": 2},
    "data": {"name": "synthetic", "options": {"train_size": 64, "val_size": 40}},
    "train": {"epochs": 1, "max_steps": 4, "batch_size": 16, "lr": 1e-3},
    "eval": {"batch_size": 16},
}


@pytest.fixture(autouse=True)
def _only_explicit_plugins(monkeypatch):
    monkeypatch.setenv("STITCHFRAME_LOAD_PLUGINS", "")
    monkeypatch.delenv("STITCHFRAME_PLUGINS", raising=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build shared by the tests of this module (they only read it or write beside it)."""
    root = tmp_path_factory.mktemp("cli")
    spec = root / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STITCHFRAME_LOAD_PLUGINS", "")
        assert cli.main([*PLUGIN, "build", str(spec), "--output", str(out)]) == 0
    return spec, out


def _regs():
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register_plugin(tiny.TinyPlugin, name="tiny")
    return load_registries(pm)


def test_build_output_is_sane(built, capsys):
    _, out = built
    routes = json.loads((out / "routes.json").read_text())
    assert len(routes["routes"]) == 23 and routes["pareto"]
    assert all(0 <= r["accuracy"] <= 100 and r["loss"] > 0 and r["flops"] > 0 for r in routes["routes"])
    anchors = {r["route"]: r for r in routes["routes"] if r["kind"] == "anchor"}
    assert sorted(anchors) == ["vit32[0:4]", "vit48[0:4]", "vit64[0:4]"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| id | route |" in (out / "routes.md").read_text()
    assert read_metadata(out / "snnet.safetensors")["stitchframe_format"] == "snnet"
    assert yaml.safe_load((out / "spec.yaml").read_text())["anchors"][0]["source"] == "tiny:vit32"


def test_routes_of_a_build_output_show_its_accuracies(built, capsys):
    _, out = built
    assert cli.main([*PLUGIN, "routes", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    built_routes = json.loads((out / "routes.json").read_text())["routes"]
    assert [r["meta"]["accuracy"] for r in printed] == [r["accuracy"] for r in built_routes]


def test_evaluate_reproduces_the_build_accuracies(built, capsys):
    _, out = built
    assert cli.main([*PLUGIN, "evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "routes" in printed and "accuracy" in printed
    again = json.loads((out / "evaluation" / "routes.json").read_text())["routes"]
    first = json.loads((out / "routes.json").read_text())["routes"]
    def key(rows):
        return [(r["route"], r["accuracy"], r["loss"]) for r in rows]

    assert key(again) == key(first)
    assert cli.main([*PLUGIN, "evaluate", str(out), "--max-batches", "1"]) == 0
    one = json.loads((out / "evaluation" / "routes.json").read_text())["routes"]
    assert any(a["accuracy"] != b["accuracy"] for a, b in zip(one, first))  # 16 of 40 images


def test_export_reproduces_the_route_without_the_build_folder(built, tmp_path, capsys):
    import shutil

    _, out = built
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    dest = tmp_path / "deploy" / "r.safetensors"
    assert cli.main([*PLUGIN, "export", str(copy), "--route", "9", "-o", str(dest)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {dest} (" in printed and "r.json" in printed
    shutil.rmtree(copy)  # the route loads from its own files
    desc = json.loads(dest.with_suffix(".json").read_text())
    assert desc["route_id"] == 9 and desc["weights"] == "r.safetensors" and desc["onnx"] is None
    assert desc["preprocess"]["input_size"] == [3, 16, 16] and len(desc["classes"]) == 10
    assert desc["spec_hash"] and "tiny:vit32" in desc["spec"]  # provenance
    regs = _regs()
    net = load_snnet(out, regs)
    route = load_route(dest, regs)
    own = {k for k in route.state_dict()}
    assert len(own) < len(net.state_dict())  # only this route's weights
    x = tiny.images(5)
    with torch.no_grad():
        assert torch.equal(route(x), net.forward_route(x, 9))


_STANDALONE = """
import sys, numpy, torch
x = torch.from_numpy(numpy.load(sys.argv[1]))
expected = numpy.load(sys.argv[2])
with torch.no_grad():
    assert numpy.array_equal(torch.export.load(sys.argv[3]).module()(x).numpy(), expected), "pt2"
try:
    import onnxruntime
except ImportError:
    import onnx
    from onnx.reference import ReferenceEvaluator
    got = ReferenceEvaluator(onnx.load(sys.argv[4])).run(None, {"inputs": x.numpy()})[0]
    print("onnx.reference")
else:
    session = onnxruntime.InferenceSession(sys.argv[4], providers=["CPUExecutionProvider"])
    got = session.run(None, {"inputs": x.numpy()})[0]
    print("onnxruntime", onnxruntime.__version__)
assert numpy.allclose(got, expected, rtol=1e-4, atol=1e-4), abs(got - expected).max()
assert not any(m.startswith("stitchframe") for m in sys.modules), "stitchframe was imported"
"""


def test_export_pt2_and_onnx_run_with_torch_and_an_onnx_runtime_alone(built, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    import numpy as np

    _, out = built
    dest = tmp_path / "r.safetensors"
    assert cli.main([*PLUGIN, "export", str(out), "--route", "4", "--onnx", "--pt2", "-o", str(dest)]) == 0
    desc = json.loads(dest.with_suffix(".json").read_text())
    assert (desc["onnx"], desc["pt2"]) == ("r.onnx", "r.pt2")
    assert not dest.with_suffix(".onnx.data").exists()  # small models are one self-contained file
    onnx.checker.check_model(onnx.load(str(dest.with_suffix(".onnx"))))
    x = tiny.images(3)  # another batch size than the export example: the batch dimension is dynamic
    with torch.no_grad():
        np.save(tmp_path / "x.npy", x.numpy())
        np.save(tmp_path / "y.npy", load_snnet(out, _regs()).forward_route(x, 4).numpy())
    args = [str(tmp_path / n) for n in ("x.npy", "y.npy", "r.pt2", "r.onnx")]
    done = subprocess.run([sys.executable, "-I", "-c", _STANDALONE, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_export_by_flops_budget_picks_the_most_accurate_route_within_it(built, capsys):
    _, out = built
    routes = json.loads((out / "routes.json").read_text())["routes"]
    budget = sorted(r["flops"] for r in routes)[10]
    best = max((r for r in routes if r["flops"] <= budget), key=lambda r: (r["accuracy"], r["flops"]))
    assert cli.main([*PLUGIN, "export", str(out), "--max-flops", f"{budget / 1e9}G"]) == 0
    assert f"route {best['id']}:" in capsys.readouterr().out
    assert (out / "exports" / f"route{best['id']}.safetensors").is_file()


def test_export_by_macs_budget_is_half_the_flops_budget(built, tmp_path, capsys):
    """--max-macs X picks what --max-flops 2X picks; the printed cost gives both units."""
    _, out = built
    routes = json.loads((out / "routes.json").read_text())["routes"]
    assert all(r["macs"] == r["flops"] / 2 for r in routes)
    budget = sorted(r["flops"] for r in routes)[10]
    flops_file, macs_file = str(tmp_path / "f.safetensors"), str(tmp_path / "m.safetensors")
    assert cli.main([*PLUGIN, "export", str(out), "--max-flops", str(budget), "-o", flops_file]) == 0
    by_flops = capsys.readouterr().out.splitlines()[0]
    assert cli.main([*PLUGIN, "export", str(out), "--max-macs", f"{budget / 2e6}M", "-o", macs_file]) == 0
    by_macs = capsys.readouterr().out.splitlines()[0]
    assert by_flops == by_macs and "GMACs (" in by_macs and "GFLOPs)" in by_macs
    assert cli.main([*PLUGIN, "export", str(out), "--max-macs", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-macs 1: No route fits")
    with pytest.raises(SystemExit):
        cli.main([*PLUGIN, "export", str(out), "--max-macs", "1G", "--max-flops", "1G"])  # one budget at a time
    with pytest.raises(SystemExit):
        cli.main([*PLUGIN, "export", str(out), "--max-macs", "inf"])


def test_cli_errors_are_one_line_with_exit_codes(built, tmp_path, capsys):
    spec, out = built
    assert cli.main([*PLUGIN, "build", str(spec), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and "\n" not in err
    assert cli.main([*PLUGIN, "evaluate", str(tmp_path)]) == 2
    assert "not a stitchframe build output" in capsys.readouterr().err
    assert cli.main([*PLUGIN, "export", str(out), "--route", "999"]) == 2
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*PLUGIN, "export", str(out)])  # --route or --max-flops is required


def test_build_overwrite_through_the_cli(built, tmp_path):
    spec, _ = built
    out = tmp_path / "o"
    assert cli.main([*PLUGIN, "build", str(spec), "-o", str(out)]) == 0
    assert cli.main([*PLUGIN, "build", str(spec), "-o", str(out), "--overwrite"]) == 0
    assert (out / "build.json").is_file()


def test_warnings_are_one_line_like_the_other_messages(monkeypatch, capsys):
    import warnings

    def warn(args):
        warnings.warn("No stitch from anchor 'a' into 'b':\n  their grids never match", stacklevel=1)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "plugins", warn)
    assert cli.main(["plugins"]) == 0
    assert capsys.readouterr().err == "warning: No stitch from anchor 'a' into 'b': their grids never match\n"
    assert warnings.showwarning is not cli._show_warning  # restored for the caller


def test_latencies_measured_after_the_build_feed_select_for(built, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built[1], out)
    assert cli.main([*PLUGIN, "evaluate", str(out), "--latency", "--max-batches", "1"]) == 0
    capsys.readouterr()
    with pytest.raises(StitchframeError, match="latency_ms"):
        load_snnet(out, _regs()).select_for(max_latency_ms=1e9)  # the build recorded none
    report = out / "evaluation" / "routes.json"
    net = load_snnet(out, _regs(), metrics=report)
    records = json.loads(report.read_text())["routes"]
    assert [r.meta["latency_ms"] for r in net.routes] == [rec["latency_ms"] for rec in records]
    assert [r.meta["accuracy"] for r in net.routes] == [rec["accuracy"] for rec in records]
    fastest = min(records, key=lambda rec: rec["latency_ms"])
    assert net.select_for(max_latency_ms=fastest["latency_ms"]).describe() == fastest["route"]
    records[0]["route"] = "someone[0:1]"
    report.write_text(json.dumps({"routes": records}))
    with pytest.raises(CheckpointError, match=r"routes\.json.*does not match a route of this SN-Net"):
        load_snnet(out, _regs(), metrics=report)


def test_a_fallback_dataset_is_named_everywhere(tmp_path, monkeypatch, capsys):
    """fashion_mnist with fallback: digits and no idx files: every report names digits, and a note says why."""
    import stitchframe.report as report

    titles = []
    plot = report.plot_pareto
    monkeypatch.setattr(report, "plot_pareto", lambda records, path, *, title="", **kw: titles.append(title) or
                        plot(records, path, title=title, **kw))
    spec = {**SPEC, "anchors": SPEC["anchors"][:2],
            "data": {"name": "fashion_mnist", "img_size": 16, "options": {"root": str(tmp_path / "none"),
                                                                         "fallback": "digits"}},
            "train": {"epochs": 1, "max_steps": 1, "batch_size": 16}, "calibration": {"batches": 1},
            "eval": {"batch_size": 64, "max_batches": 1}}
    path = tmp_path / "fallback.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert cli.main([*PLUGIN, "build", str(path), "--output", str(out)]) == 0
    printed = capsys.readouterr()
    notes = [line for line in printed.err.splitlines() if "falling back to scikit-learn digits" in line]
    assert len(notes) == 1 and notes[0].startswith("warning: Fashion-MNIST not found in")
    assert "apt install dataset-fashion-mnist" in notes[0]
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["data"]["name"] == "digits" and manifest["data"]["requested"] == "fashion_mnist"
    assert json.loads((out / "routes.json").read_text())["data"] == "digits"
    first = (out / "routes.md").read_text().splitlines()[0]
    assert first == "# vit32 / vit48 on digits (instead of fashion_mnist)"
    assert titles == ["vit32 / vit48 on digits (instead of fashion_mnist)"]
    table_title = next(line for line in printed.out.splitlines() if "routes (" in line)
    assert "scikit-learn digits" in table_title and "fallback" in table_title
    assert "On digits (instead of fashion_mnist): " in printed.out
    assert "fashion_mnist" not in printed.out.replace("(instead of fashion_mnist)", "")


def _files(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_export_onnx_without_the_extra_writes_nothing(built, tmp_path, monkeypatch, capsys):
    import importlib.util

    _, out = built
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else
                        find_spec(name, *a))
    before = _files(out)
    assert cli.main([*PLUGIN, "export", str(out), "--route", "3", "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'stitchframe[onnx]'" in err and "nothing was written" in err and err.count("\n") == 1
    assert _files(out) == before
    assert cli.main([*PLUGIN, "export", str(out), "--route", "3", "--onnx", "-o", str(tmp_path / "x" / "r")]) == 2
    assert _files(tmp_path) == []


def test_a_failing_export_leaves_no_file_behind(built, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")

    def fail(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", fail)
    _, out = built
    dest = tmp_path / "e" / "r.safetensors"
    assert cli.main([*PLUGIN, "export", str(out), "--route", "3", "--onnx", "-o", str(dest)]) == 1
    assert "exporter exploded" in capsys.readouterr().err
    assert _files(dest.parent) == []
    assert cli.main([*PLUGIN, "export", str(out), "--route", "3", "-o", str(dest)]) == 0
    assert _files(dest.parent) == ["r.json", "r.safetensors"]


def test_evaluate_with_max_batches_says_how_many_images_it_evaluated(built, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built[1], out)
    capsys.readouterr()
    assert cli.main([*PLUGIN, "evaluate", str(out), "--max-batches", "1"]) == 0
    title = next(line for line in capsys.readouterr().out.splitlines() if "routes (" in line)
    assert "evaluated on 16 of the 40 val images" in title


def test_an_impossible_budget_is_a_usage_error(built, capsys):
    _, out = built
    assert cli.main([*PLUGIN, "export", str(out), "--max-flops", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --max-flops 1: No route fits") and "give a larger budget" in err
