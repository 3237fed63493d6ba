"""Smoke test of the benchmarks (``benchmarks/``): each runs in a tiny configuration and writes its JSON.

Only the structure of the results is checked; no timing is asserted.
"""

from __future__ import annotations

import json
import math

import attrs
import pytest
import torch

import benchmarks
from benchmarks import (
    BENCHMARKS,
    calibration,
    elastic,
    evaluation,
    forward,
    layout,
    memory,
    startup,
    switching,
    training,
    zeroshot,
)
from benchmarks.cli import main, run_benchmark, write_summary
from benchmarks.harness import Context, interleave, python_allocations, ratios

VITS = ({"source": "tiny:vit32"}, {"source": "tiny:vit48", "options": {"seed": 1}},
        {"source": "tiny:vit64", "options": {"seed": 2}})
CNNS = ({"source": "tiny:cnn8", "name": "cnn8"}, {"source": "tiny:cnn16", "name": "cnn16", "options": {"seed": 1}})

TINY = {
    "forward": forward.Params(configs=(forward.Config(label="tiny", anchors=VITS, batch=2, rounds=2),),
                              dispatch_calls=50, dispatch_repeats=2),
    "switching": switching.Params(anchors=VITS, calls=200, repeats=1, alloc_calls=200, rounds=2),
    "evaluation": evaluation.Params(anchors=VITS[:2], spaces=(evaluation.Space(space="snnet", images=4, rounds=1),),
                                    batch=2, distributed=evaluation.Distributed(space="snnet", images=6, rounds=1)),
    "training": training.Params(anchors=VITS[:2], batch=4, routes=2, steps_per_route=1,
                                cpu_variants=("fp32", "bf16")),
    "layout": layout.Params(families=(layout.Family(label="tiny CNNs", anchors=CNNS, batch=4),
                                      layout.Family(label="tiny ViTs", anchors=VITS[:2], batch=4)), routes=2, rounds=1),
    "calibration": calibration.Params(anchors=VITS[:2], images=(4, 8), batch=4, repeats=1, repeats_large=1,
                                      build_images=(8, 16), build_batch=4),
    "memory": memory.Params(anchors=VITS[:2], batch=2, stitched_pairs=1),
    "elastic": elastic.Params(
        anchors=CNNS,
        configs=(elastic.Config(label="synthetic", data="synthetic", data_options={"train_size": 32, "val_size": 16},
                                img_size=None, steps_per_anchor=2, batch_size=8, calibration_batches=1,
                                route_bn_ablation=1, refit_ablation=True),),
        seeds=(0, 1), workers=1,
        recipe={"stitch": {"space": "snnet"}, "calibration": {"batches": 1, "refit": True},
                "train": {"lr": 1e-3, "anchor_share": 0.5, "warmup_steps": 0}},
        eval_batch_size=16),
    "zeroshot": zeroshot.Params(anchors=VITS[:2], eval_views=1, calib_views=1, crop_calib_views=1,
                                eval_photos=("chelsea", "coffee"), calibration_photos=("camera", "coins")),
    "startup": startup.Params(rounds=1, warmup=0, commands=(("--version", ("--version",), 1.0),)),
}


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return True


@pytest.fixture
def ctx(regs, tmp_path):
    return Context(device=torch.device("cpu"), preset="smoke", registries=regs, log=lambda s: None,
                   work_dir=tmp_path / "work")


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_writes_its_json(name, ctx, tmp_path):
    out = tmp_path / "results"
    result = run_benchmark(name, TINY[name], ctx, out)
    data = json.loads((out / f"{name}.json").read_text())
    assert data == json.loads(json.dumps(result, default=str))
    assert data["name"] == name and data["preset"] == "smoke"
    assert data["environment"]["torch"] == torch.__version__
    assert data["goals"], "every benchmark states its goals"
    for goal in data["goals"]:
        assert set(goal) >= {"name", "target", "measured", "met"} and goal["met"] in (True, False, None)
    assert _finite(data)
    md = (out / f"{name}.md").read_text()
    assert md.startswith(f"## {data['title']}") and "| goal |" in md
    summary = write_summary(out).read_text()
    assert data["title"] in summary


def test_forward_outputs_are_bit_identical(ctx, tmp_path):
    result = run_benchmark("forward", TINY["forward"], ctx, tmp_path)
    routes = result["configs"][0]["routes"]
    assert len(routes) == 3 + 2  # every anchor and a stitched route of each anchor pair
    assert all(r["bit_identical"] for r in routes)


def test_switching_builds_nothing(ctx, tmp_path):
    result = run_benchmark("switching", TINY["switching"], ctx, tmp_path)
    assert result["plans_unchanged"]
    assert all(c["module_inits"] == 0 for c in result["select"].values())


def test_evaluation_reads_every_image_once(ctx, tmp_path):
    pytest.importorskip("stitchframe.evaluate")
    result = run_benchmark("evaluation", TINY["evaluation"], ctx, tmp_path)
    space = result["spaces"][0]
    assert space["getitem_calls"] == {"shared": 4, "per_route": 4 * space["routes"]}
    assert space["same_accuracy"] and space["bound"] > 1
    assert space["shared_block_forwards"] < space["naive_block_forwards"]
    split = result["distributed"]  # 2 gloo processes vs 1: 3 batches, at most 2 on one rank
    assert split["same_accuracy"] and split["getitem_calls"] == {"1": 6, "2": 6} and split["ideal"] == 1.5
    assert split["speedup"]["n"] == 1 and split["speedup"]["median"] > 0


def test_zeroshot_measures_the_default_share_fit_against_the_other(ctx, tmp_path):
    """The same routes calibrated with pooled and with mean: a goal says whether the default starts closest."""
    from stitchframe.spec import CalibrationSpec

    result = run_benchmark("zeroshot", TINY["zeroshot"], ctx, tmp_path)
    default, other = zeroshot.DEFAULT_SHARE_FIT, zeroshot.OTHER_SHARE_FIT
    assert default == CalibrationSpec().share_fit and {default, other} == {"pooled", "mean"}
    assert result["calibration_options"][f"other_photos, share_fit {other}"]["share_fit"] == other
    assert result["calibration_options"]["other_photos"]["share_fit"] == default
    mine, theirs = result["summaries"]["other_photos"], result["summaries"][f"other_photos, share_fit {other}"]
    (goal,) = [g for g in result["goals"] if "share_fit" in g["name"]]
    assert goal["met"] == ((mine["median"], mine["mean"]) >= (theirs["median"], theirs["mean"]))
    assert f"{default} {mine['median']:.0%} median" in goal["measured"]


def test_calibration_matches_the_pinv_reference(ctx, tmp_path):
    result = run_benchmark("calibration", TINY["calibration"], ctx, tmp_path)
    assert all(r["relative_weight_difference"] < 1e-3 for r in result["rows"])
    # the build path calibrated on each number of images, batch by batch
    assert [(b["images"], b["batches"]) for b in result["builds"]] == [(8, 2), (16, 4)]
    assert all(b["peak_bytes"] is None or b["peak_bytes"] >= 0 for b in result["builds"])
    assert [b["ridge_folds"] for b in result["builds"]] == [4, 4]  # ridge auto: 4 folds of images from the start


def test_fold_state_is_what_ridge_auto_calibration_keeps(ctx, monkeypatch):
    """The benchmark's computed fold state equals the normal equations calibrate() holds at the end, per fold."""
    import stitchframe
    from stitchframe.stitch_layers import LeastSquaresStitch

    net = benchmarks.families.build(VITS[:2], ctx.regs(), seed=0)
    held, end = [], LeastSquaresStitch.fit_end

    def spy(self, ridge=0.0):
        held.append(sum(t.numel() * t.element_size() for fold in self._folds.values() for eq in fold.values()
                        for t in (eq.xtx, eq.xty)))
        return end(self, ridge)

    monkeypatch.setattr(LeastSquaresStitch, "fit_end", spy)
    stitchframe.calibrate(net, [benchmarks.families.images(net, 4, seed=s) for s in range(6)], ridge="auto")
    assert sum(held) == 4 * calibration.fold_state_bytes(net) > 0


def test_exported_route_holds_its_own_parameters(ctx, tmp_path):
    result = run_benchmark("memory", TINY["memory"], ctx, tmp_path)
    assert all(r["params"] < result["snnet"]["params"] for r in result["routes"])
    assert result["goals"][0]["met"]


def test_elastic_compares_every_run_at_equal_compute(ctx, tmp_path):
    result = run_benchmark("elastic", TINY["elastic"], ctx, tmp_path)
    runs = result["runs"]
    assert set(runs) == {"alone", "default", "default-refit", "default+route_bn", "uniform"}
    # the refit ablation: the same anchors, the stitching layers as training left them
    anchors = [[r["accuracy"] for r in runs[k]["routes"] if r["kind"] == "anchor"] for k in ("default", "default-refit")]
    assert anchors[0] == anchors[1] and runs["default-refit"]["steps"] == runs["default"]["steps"]
    assert set(runs["alone"]) == {"cnn8", "cnn16"}
    assert all(v["steps"] == 2 for v in runs["alone"].values())
    for name in ("default", "uniform"):
        assert runs[name]["steps"] == 4  # two anchors x two steps each
        assert set(runs[name]["anchor_gap_points"]) == {"cnn8", "cnn16"}
        assert all(0 <= r["accuracy"] <= 100 for r in runs[name]["routes"])
        assert {"summary", "routes"} <= set(runs[name])
    assert set(result["configs"]["synthetic"]["per_seed"]) == {"0", "1"}
    config_goals = [g for g in result["goals"] if g["name"].startswith("synthetic: ")]
    assert {g["name"].split(": ", 1)[1] for g in config_goals} == {
        "anchors vs fine-tuned alone (mean over seeds)", "stitched routes on or above the anchors' line",
        "anchors in order of cost"}
    (zeroshot,) = [g for g in result["goals"] if g not in config_goals]  # issue 12's fourth goal, from zeroshot.json
    assert zeroshot["target"] == "median at least 90%" and "zeroshot" in zeroshot["measured"]
    md = (tmp_path / "elastic.md").read_text()
    assert "Over the seeds" in md and "Equal compute" in md and "Tried on the way" in md
    # one row per seed and pair of neighbouring anchors, with the counts of the line summary
    (iv,) = runs["default"]["summary"]["intervals"]
    acc = {r["route"]: r["accuracy"] for r in runs["default"]["routes"]}
    row = (f"| 0 | `{iv['from']}` -> `{iv['to']}` | {acc[iv['from']]:.2f} -> {acc[iv['to']]:.2f} | {iv['routes']} | "
           f"{iv['on_or_above_line']} | {iv['within_anchor_accuracy']} |")
    assert row in md and md.count("` -> `" + iv["to"] + "` |") == 2  # and one for seed 1


def test_elastic_resume_reuses_builds_of_the_same_code_and_spec_only(ctx, tmp_path, monkeypatch):
    first = run_benchmark("elastic", TINY["elastic"], ctx, tmp_path / "a")
    assert first["reused"] == []
    built = []
    real = elastic._build_job
    monkeypatch.setattr(elastic, "_build_job", lambda spec, out, *a, **k: built.append(out) or real(spec, out, *a, **k))
    again = run_benchmark("elastic", TINY["elastic"], attrs.evolve(ctx, resume=True), tmp_path / "b")
    assert built == [] and len(again["reused"]) == 8  # 2 seeds x (2 anchors alone + SN-Nets default, uniform)
    assert again["configs"] == first["configs"]
    assert "builds come from an interrupted run" in (tmp_path / "b" / "elastic.md").read_text()
    params = attrs.evolve(TINY["elastic"], seeds=(0,), recipe={**TINY["elastic"].recipe,
                                                                 "stitch": {"space": "snnet", "final_norm": "keep"}})
    run_benchmark("elastic", params, attrs.evolve(ctx, resume=True), tmp_path / "c")
    assert len(built) == 2  # the SN-Nets of seed 0 (a changed spec); the anchors alone are reused
    monkeypatch.setattr(elastic, "code_version", lambda: "other-code")
    run_benchmark("elastic", params, attrs.evolve(ctx, resume=True), tmp_path / "d")
    assert len(built) == 2 + 4  # other code: everything is built again


def test_elastic_default_recipe_is_the_default_spec():
    recipe = elastic.default_recipe()
    spec = __import__("yaml").safe_load(elastic.DEFAULT_SPEC.read_text())
    assert recipe == {k: spec[k] for k in ("stitch", "calibration", "train")}


def test_training_skips_cuda_only_variants_on_cpu(ctx, tmp_path):
    result = run_benchmark("training", TINY["training"], ctx, tmp_path)
    assert [v["variant"] for v in result["variants"]] == ["fp32", "bf16"]
    assert result["skipped"] == ["compile"]


def test_layout_times_both_layouts_and_reports_what_auto_picks(ctx, tmp_path):
    result = run_benchmark("layout", TINY["layout"], ctx, tmp_path)
    assert [f["auto"] for f in result["families"]] == ["channels_last", "contiguous"]
    for fam in result["families"]:
        assert set(fam["seconds"]) == {f"{k} {n}" for k in ("train", "forward") for n in ("channels_last", "contiguous")}
        assert fam["train_channels_last_over_contiguous"]["n"] == 2  # routes x rounds
    ratio = [f["train_channels_last_over_contiguous"]["median"] for f in result["families"]]
    assert [g["met"] for g in result["goals"]] == [ratio[0] <= layout.TIE, 1 / ratio[1] <= layout.TIE]


def test_every_benchmark_has_presets():
    for name in BENCHMARKS:
        mod = benchmarks.load(name)
        assert set(mod.presets()) == {"quick", "full"}
        assert callable(mod.run) and callable(mod.markdown) and mod.NAME == name


def test_harness_pieces():
    calls = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls.count("a") == calls.count("b") == 4 and all(len(v) == 3 for v in times.values())
    assert ratios({"a": [2.0, 4.0], "b": [1.0, 2.0]}, "a", "b")["median"] == 2.0
    assert python_allocations(lambda: None, 100) == {"calls": 100, "net_bytes": 0, "peak_bytes": 0}
    held = []
    assert python_allocations(lambda: held.append(object()), 100)["net_bytes"] > 0


def test_cli_lists_and_rejects_unknown_names(capsys):
    assert main(["list"]) == 0
    assert "forward" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--only", "nope"])
