from __future__ import annotations

import json

import pytest
import torch

import stitchframe.pipeline as pipeline
from stitchframe import (BuildInterrupted, CheckpointError, OutputExistsError, SpecError, build, evaluate_routes,
                         load_snnet, parse_spec)
from stitchframe.io import read_metadata
from stitchframe.spec import dump_spec, load_spec, spec_hash
from tests import tiny


def tiny_spec(**changes) -> dict:
    spec = {
        "anchors": ["tiny:vit32", {"source": "tiny:vit48", "options": {"seed": 1}}],
        "stitch": {"space": "snnet"},
        "calibration": {"batches": 2},
        "data": {"name": "synthetic", "options": {"train_size": 64, "val_size": 48}},
        "train": {"epochs": 0, "batch_size": 16},
        "eval": {"batch_size": 16},
    }
    for key, value in changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and key in spec else value
    return spec


def _build(regs, out, **kw):
    return build(parse_spec(kw.pop("spec", None) or tiny_spec()), output=out, registries=regs, **kw)


def test_build_writes_a_complete_output_that_reloads(regs, tmp_path):
    out = tmp_path / "out"
    res = _build(regs, out)
    assert res.output == out.absolute()
    for name in ("snnet.safetensors", "spec.yaml", "routes.json", "routes.md", "pareto.png", "build.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "evaluation.jsonl").is_file()
    assert not pipeline.partial_dir(out).exists() and not (out / "build-state.json").exists()
    spec = load_spec(out / "spec.yaml")
    assert dump_spec(spec) == dump_spec(parse_spec(tiny_spec()))
    header = read_metadata(out / "snnet.safetensors")
    assert header["spec_hash"] == spec_hash(spec)
    table = json.loads(header["routes"])
    assert [r["name"] for r in table] == [r.describe() for r in res.snnet.routes]
    routes = json.loads((out / "routes.json").read_text())["routes"]
    assert [r["accuracy"] for r in routes] == [r.accuracy for r in res.evaluation.routes]
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["data"]["num_classes"] == 10 and manifest["train"] is None
    assert manifest["evaluation"]["block_forwards"] < manifest["evaluation"]["naive_block_forwards"]

    net = load_snnet(out, regs)
    x = torch.stack([tiny.images(4)[i] for i in range(4)])
    with torch.no_grad():
        for i in range(len(net.routes)):
            assert torch.equal(net.forward_route(x, i), res.snnet.eval().forward_route(x, i))
            assert net.routes[i].meta["accuracy"] == res.snnet.routes[i].meta["accuracy"]


def test_load_snnet_rejects_an_edited_spec(regs, tmp_path):
    out = tmp_path / "out"
    _build(regs, out)
    (out / "spec.yaml").write_text(dump_spec(parse_spec(tiny_spec(seed=5))))
    with pytest.raises(CheckpointError, match="another spec"):
        load_snnet(out, regs)
    with pytest.raises(CheckpointError, match="not a stitchframe build output"):
        load_snnet(tmp_path, regs)


def test_existing_output_needs_overwrite(regs, tmp_path):
    out = tmp_path / "out"
    _build(regs, out)
    before = (out / "snnet.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _build(regs, out, spec=tiny_spec(seed=3))
    assert (out / "snnet.safetensors").read_bytes() == before
    _build(regs, out, spec=tiny_spec(seed=3), overwrite=True)
    assert json.loads((out / "build.json").read_text())["spec_hash"] == spec_hash(parse_spec(tiny_spec(seed=3)))
    other = tmp_path / "not_a_build"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a stitchframe build"):
        _build(regs, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_failed_build_keeps_previous_outputs_and_resumes(regs, tmp_path, monkeypatch):
    import stitchframe.train

    out = tmp_path / "out"
    _build(regs, out)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    spec = tiny_spec(seed=7, train={"epochs": 1, "max_steps": 2, "batch_size": 16})

    def broken(*args, **kwargs):
        raise RuntimeError("crashed")

    monkeypatch.setattr(pipeline, "_evaluate", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        _build(regs, out, spec=spec, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    partial = pipeline.partial_dir(out)
    assert json.loads((partial / "build-state.json").read_text())["stage"] == "trained"
    trained = (partial / "snnet.safetensors").read_bytes()

    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "calibrate", broken)  # resuming must neither calibrate nor train again
    monkeypatch.setattr(stitchframe.train, "train", broken)
    with pytest.raises(CheckpointError, match="another spec"):
        _build(regs, out, spec=tiny_spec(seed=8), overwrite=True, resume=True)
    res = _build(regs, out, spec=spec, overwrite=True, resume=True)
    assert not partial.exists()
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["spec_hash"] == spec_hash(parse_spec(spec)) and manifest["train"]["steps"] == 2
    reloaded = _load_state(regs, spec, trained, tmp_path)
    assert pipeline.state_fingerprint(res.snnet) == pipeline.state_fingerprint(reloaded)


def _load_state(regs, spec_dict, weights: bytes, tmp_path):
    from stitchframe import assemble, load_module_state

    path = tmp_path / "w.safetensors"
    path.write_bytes(weights)
    net = assemble(parse_spec(spec_dict), regs)
    load_module_state(net, path)
    return net


def test_an_unfinished_build_is_discarded_only_with_overwrite(regs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline, "_evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        _build(regs, out)
    assert pipeline.partial_dir(out).exists() and not out.exists()
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(pipeline, "calibrate", lambda *a, **k: calls.append(1))
    with pytest.raises(OutputExistsError, match="holds an unfinished build.*--resume.*--overwrite"):
        _build(regs, out)  # never thrown away by a build that merely forgot --resume
    assert calls == [] and pipeline.partial_dir(out).exists()
    _build(regs, out, overwrite=True)
    assert calls == [1] and out.is_dir()


def test_an_interrupted_swap_is_recovered(regs, tmp_path):
    out = tmp_path / "out"
    _build(regs, out)
    out.rename(tmp_path / ".out.old")  # a crash between the two renames of the swap
    with pytest.raises(OutputExistsError):
        _build(regs, out)
    assert (out / "build.json").is_file() and not (tmp_path / ".out.old").exists()


def test_training_runs_between_calibration_and_evaluation(regs, tmp_path):
    spec = tiny_spec(train={"epochs": 1, "max_steps": 4, "batch_size": 16, "lr": 1e-3})
    res = _build(regs, tmp_path / "out", spec=spec)
    manifest = json.loads((tmp_path / "out" / "build.json").read_text())
    assert manifest["train"]["steps"] == 4 and len(manifest["train"]["routes"]) == 4
    assert manifest["train"]["checkpoint"].startswith(str((tmp_path / "out").absolute()))
    assert (tmp_path / "out" / "checkpoints" / "latest").is_file()
    untrained = _build(regs, tmp_path / "untrained", spec=tiny_spec())
    assert pipeline.state_fingerprint(res.snnet) != pipeline.state_fingerprint(untrained.snnet)
    assert pipeline.state_fingerprint(load_snnet(tmp_path / "out", regs)) == pipeline.state_fingerprint(res.snnet)


def test_interrupted_training_resumes_from_its_checkpoint(regs, tmp_path, monkeypatch):
    import stitchframe.train

    spec = tiny_spec(train={"epochs": 2, "max_steps": 6, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 3})
    straight = _build(regs, tmp_path / "straight", spec=spec)
    real_train = stitchframe.train.train
    steps_run = []

    def killed_after_three(*args, **kwargs):
        result = real_train(*args, **kwargs, stop_after=3)
        steps_run.append(result.steps)
        raise KeyboardInterrupt

    monkeypatch.setattr(stitchframe.train, "train", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        _build(regs, tmp_path / "out", spec=spec)
    assert steps_run == [3] and not (tmp_path / "out").exists()
    monkeypatch.undo()
    res = _build(regs, tmp_path / "out", spec=spec, resume=True)
    assert res.train_result["steps"] == 6 and res.train_result["routes"][:3] == straight.train_result["routes"][:3]
    assert pipeline.state_fingerprint(res.snnet) == pipeline.state_fingerprint(straight.snnet)
    assert [r.accuracy for r in res.evaluation.routes] == [r.accuracy for r in straight.evaluation.routes]


def test_a_signal_during_training_keeps_the_build_unfinished_for_resume(regs, tmp_path, monkeypatch):
    import signal

    import stitchframe.train
    from tests._training import SignalAt

    spec = tiny_spec(train={"epochs": 2, "max_steps": 6, "batch_size": 16, "lr": 1e-3})
    straight = _build(regs, tmp_path / "straight", spec=spec)
    real_train = stitchframe.train.train

    def sigterm_in_step_three(snnet, dataset, *args, **kwargs):
        return real_train(snnet, SignalAt(dataset, at=16 * 2 + 5, sig=signal.SIGTERM), *args, **kwargs)

    monkeypatch.setattr(stitchframe.train, "train", sigterm_in_step_three)
    with pytest.raises(BuildInterrupted, match="SIGTERM during training at step 3"):
        _build(regs, tmp_path / "out", spec=spec)
    assert not (tmp_path / "out").exists()  # not finished as if training had run to the end
    monkeypatch.undo()
    res = _build(regs, tmp_path / "out", spec=spec, resume=True)
    assert res.train_result["steps"] == 6 and res.train_result["stopped_early"] is None
    assert pipeline.state_fingerprint(res.snnet) == pipeline.state_fingerprint(straight.snnet)


def test_spec_mistakes_are_reported_before_any_work(regs, tmp_path):
    with pytest.raises(SpecError, match=r"outputs 10 classes but dataset 'synthetic' has 5.*anchors\[0\]\.options"):
        _build(regs, tmp_path / "a", spec=tiny_spec(data={"name": "synthetic", "options": {"num_classes": 5}}))
    with pytest.raises(SpecError, match=r"data.img_size is 32 but anchors\[0\] \('vit32'\) was built for 16x16"):
        _build(regs, tmp_path / "b", spec=tiny_spec(data={"name": "synthetic", "img_size": 32}))
    with pytest.raises(SpecError, match="data section"):
        _build(regs, tmp_path / "c", spec={k: v for k, v in tiny_spec().items() if k != "data"})
    with pytest.raises(SpecError, match="no output folder"):
        build(parse_spec(tiny_spec()), registries=regs)


def test_cnn_build_with_fitted_heads_and_frozen_batchnorm(regs, tmp_path):
    from stitchframe import assemble

    spec = tiny_spec(
        anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
        calibration={"batches": 4, "heads": True},
        train={"epochs": 1, "max_steps": 3, "batch_size": 16, "lr": 1e-3, "freeze": ["batchnorm"]},
    )
    res = _build(regs, tmp_path / "out", spec=spec)
    fresh = assemble(parse_spec(spec), regs)
    trained, init = dict(res.snnet.named_modules()), dict(fresh.named_modules())
    bns = [n for n, m in trained.items() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for n in bns:  # statistics and affine weights of every BatchNorm are the pretrained ones
        for key, t in trained[n].state_dict().items():
            assert torch.equal(t, init[n].state_dict()[key]), f"{n}.{key}"
    assert not torch.equal(trained["anchors.cnn8.blocks.0.conv"].weight, init["anchors.cnn8.blocks.0.conv"].weight)
    heads = [r.accuracy for r in res.evaluation.routes if r.name in ("cnn8[0:3]", "cnn16[0:3]")]
    assert min(heads) > 20  # fitted classifiers: above the 10 % the random heads get on these data


def test_progress_in_a_log_is_a_line_per_tenth(tmp_path):
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    with pipeline._progress(Console(file=buf, width=100), "evaluating 3 routes", 20) as tick:
        for done in range(1, 21):
            tick(done, 20)
    lines = buf.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines[:-1]] == [f"evaluating 3 routes: {i}/20" for i in range(2, 20, 2)]
    assert lines[-1].startswith("evaluating 3 routes: done in ")


def test_cnn_build_with_anchor_share_and_per_route_batchnorm(regs, tmp_path):
    spec = tiny_spec(
        anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
        calibration={"batches": 4, "heads": True},
        train={"epochs": 2, "max_steps": 6, "batch_size": 16, "lr": 1e-3, "anchor_share": 0.5,
               "route_bn_batches": 2},
    )
    out = tmp_path / "out"
    res = _build(regs, out, spec=spec)
    routes = res.train_result["routes"]
    anchors = {i for i, r in enumerate(res.snnet.routes) if r.is_anchor}
    assert any(r in anchors for r in routes) and any(r not in anchors for r in routes)
    bns = [m for m in res.snnet.modules() if hasattr(m, "route_mean")]
    assert bns and any(not torch.equal(m.route_mean[0], m.route_mean[-1]) for m in bns if len(m.route_mean) > 1)
    manifest = json.loads((out / "build.json").read_text())
    assert "route_bn" in manifest["seconds"]
    net = load_snnet(out, regs)  # the per-route statistics come back with the weights
    x = tiny.images(4)
    with torch.no_grad():
        for i in range(len(net.routes)):
            assert torch.equal(net.forward_route(x, i), res.snnet.eval().forward_route(x, i))
            assert net.routes[i].meta["accuracy"] == res.snnet.routes[i].meta["accuracy"]


def test_build_with_the_default_recipe_distils_stitched_steps_from_their_end_anchor(regs, tmp_path, monkeypatch):
    """The embedded default's levers end to end on tiny CNNs: cyclic anchor share, frozen BatchNorm, teacher: end."""
    import stitchframe.train

    spec = tiny_spec(
        anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
        calibration={"batches": 4, "heads": True},
        train={"epochs": 2, "max_steps": 8, "batch_size": 16, "lr": 1e-3, "anchor_share": 0.5, "sampling": "cyclic",
               "loss": "distill", "teacher": "end", "freeze": ["batchnorm"]},
    )
    distilled: list[bool] = []
    loss = stitchframe.train.training_loss
    monkeypatch.setattr(stitchframe.train, "training_loss",
                        lambda logits, target, cfg, teacher=None: distilled.append(teacher is not None)
                        or loss(logits, target, cfg, teacher))
    fresh = build(parse_spec({**spec, "train": {**spec["train"], "max_steps": 0}}), output=tmp_path / "calibrated",
                  registries=regs)
    distilled.clear()
    res = _build(regs, tmp_path / "out", spec=spec)
    net, routes = res.snnet, res.train_result["routes"]
    assert any(net.routes[r].is_anchor for r in routes) and not all(net.routes[r].is_anchor for r in routes)
    assert distilled == [not net.routes[r].is_anchor for r in routes]  # a teacher on every stitched step only
    for name, anchor in net.anchors.items():  # frozen BatchNorm: the statistics calibration left, unchanged
        before = fresh.snnet.anchors[name].state_dict()
        assert all(torch.equal(v, before[k]) for k, v in anchor.state_dict().items() if "running_" in k)


def test_build_with_cyclic_sampling_spreads_anchor_steps_and_takes_routes_in_turn(regs, tmp_path):
    spec = tiny_spec(
        anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
        calibration={"batches": 4, "heads": True},
        train={"epochs": 3, "max_steps": 12, "batch_size": 16, "lr": 1e-3, "anchor_share": 0.5, "sampling": "cyclic",
               "freeze": ["batchnorm"]},
    )
    res = _build(regs, tmp_path / "out", spec=spec)
    net, routes = res.snnet, res.train_result["routes"]
    anchors = [i for i, r in enumerate(net.routes) if r.is_anchor]
    stitched = [i for i, r in enumerate(net.routes) if not r.is_anchor]
    assert len(routes) == 12 and len(stitched) >= 2
    assert [net.routes[r].is_anchor for r in routes] == [False, True] * 6  # every second step, evenly spread
    anchor_steps = [r for r in routes if net.routes[r].is_anchor]
    assert all(sorted(anchor_steps[i:i + 2]) == anchors for i in range(0, 6, 2))  # each anchor once per round
    stitched_steps = [r for r in routes if not net.routes[r].is_anchor]
    n = min(len(stitched), len(stitched_steps))
    assert len(set(stitched_steps[:n])) == n  # no stitched route twice before every one has run


def _tracking(fn, live: list[int], refs: list):
    """Wrap a calibration function: record, at every batch it reads, how many batches read so far are alive."""
    import gc
    import weakref

    def wrapper(snnet, batches, **kw):
        def tracked():
            for batch in batches:
                refs.append(weakref.ref(batch[0]))
                gc.collect()
                live.append(sum(r() is not None for r in refs))
                yield batch

        return fn(snnet, tracked(), **kw)

    return wrapper


def test_build_streams_calibration_batches_instead_of_holding_them(regs, tmp_path, monkeypatch):
    live, refs = [], []
    monkeypatch.setattr(pipeline, "calibrate", _tracking(pipeline.calibrate, live, refs))
    monkeypatch.setattr(pipeline, "calibrate_heads", _tracking(pipeline.calibrate_heads, live, refs))
    spec = tiny_spec(anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
                     calibration={"batches": 6, "batch_size": 8, "heads": True})
    _build(regs, tmp_path / "out", spec=spec)
    assert len(refs) == 12  # two passes (stitches, heads) of 6 batches of calibration.batch_size
    assert [r().shape[0] if r() is not None else 8 for r in refs] == [8] * 12
    assert max(live) <= 2  # the batch being read and at most the one before it; a list would hold all 6


def test_streamed_calibration_equals_the_list_of_batches(regs, tmp_path):
    from itertools import islice

    from torch.utils.data import DataLoader

    from stitchframe import assemble, calibrate, calibrate_heads
    from stitchframe.datasets import agreed_preprocess, load_data

    raw = tiny_spec(anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
                    calibration={"batches": 3, "heads": True, "ridge": "auto", "augment": 1})
    spec = parse_spec(raw)
    res = _build(regs, tmp_path / "out", spec=raw)
    # the old path: the first calibration.batches batches of a seeded loader, collected in a list
    torch.manual_seed(spec.seed)
    net = pipeline.place(assemble(spec, regs), "cpu", spec.memory_format)  # the build's layout: channels_last
    pre, _ = agreed_preprocess(list(net.anchors.values()), spec.data.img_size)
    splits = load_data(spec, regs, pre)
    loader = DataLoader(splits.train, batch_size=spec.train.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(spec.seed), collate_fn=splits.collate_fn)
    batches = list(islice(loader, spec.calibration.batches))
    calibrate(net, batches, ridge="auto", augment=1, seed=spec.seed)
    calibrate_heads(net, batches, num_classes=splits.num_classes, ridge=spec.calibration.head_ridge)
    built = res.snnet.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, built[key]), key


def test_resolve_memory_format_picks_channels_last_for_cnn_anchors(regs):
    from stitchframe import assemble

    cnns = assemble(parse_spec(tiny_spec(anchors=["tiny:cnn8", "tiny:cnn16"])), regs)
    vits = assemble(parse_spec(tiny_spec()), regs)  # two anchors, one patch-embedding Conv2d each
    assert pipeline.resolve_memory_format("auto", cnns) == torch.channels_last
    assert pipeline.resolve_memory_format("auto", vits) == torch.contiguous_format
    assert pipeline.resolve_memory_format("auto", tiny.tiny_cnn(8)) == torch.channels_last
    assert pipeline.resolve_memory_format("channels_last", vits) == torch.channels_last
    assert pipeline.resolve_memory_format("contiguous", cnns) == torch.contiguous_format


def test_cnn_build_in_channels_last_matches_contiguous_and_reloads_in_it(regs, tmp_path):
    def cnn(memory_format):
        return tiny_spec(
            anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}], memory_format=memory_format,
            calibration={"batches": 2, "heads": True},
            train={"epochs": 1, "max_steps": 3, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 1},
        )

    res = {fmt: _build(regs, tmp_path / fmt, spec=cnn(fmt)) for fmt in ("auto", "contiguous")}
    conv = "anchors.cnn16.blocks.1.conv"  # a 3x3 kernel: channels_last differs from contiguous
    weights = {fmt: dict(r.snnet.named_modules())[conv].weight for fmt, r in res.items()}
    assert weights["auto"].is_contiguous(memory_format=torch.channels_last) and not weights["auto"].is_contiguous()
    assert weights["contiguous"].is_contiguous()
    # the layout changes the order of float sums only: same training, same accuracies
    torch.testing.assert_close(weights["auto"], weights["contiguous"], atol=1e-4, rtol=1e-4)
    assert [r.accuracy for r in res["auto"].evaluation.routes] == [r.accuracy for r in res["contiguous"].evaluation.routes]
    net = load_snnet(tmp_path / "auto", regs)  # saved contiguous (safetensors), reloaded in the spec's layout
    assert dict(net.named_modules())[conv].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(dict(net.named_modules())[conv].weight, weights["auto"].detach())
    # the layout is not part of the spec's hash: the build reloads after spec.yaml switches it
    (tmp_path / "auto" / "spec.yaml").write_text(dump_spec(parse_spec(cnn("contiguous"))))
    again = dict(load_snnet(tmp_path / "auto", regs).named_modules())[conv].weight
    assert again.is_contiguous() and torch.equal(again, weights["auto"].detach())


def test_spec_hash_leaves_out_what_older_builds_did_not_have_so_they_still_load():
    spec = parse_spec(tiny_spec())
    assert {spec_hash(parse_spec(tiny_spec(memory_format=f))) for f in ("auto", "channels_last", "contiguous")} == {
        spec_hash(spec)}
    # the hash this spec had before memory_format existed (commit 551ea33): builds made then must still load.
    # A new spec field that changes what a build computes changes it, on purpose; one that does not belongs
    # in stitchframe.spec.UNHASHED.
    assert spec_hash(spec) == "909290dad6f0cdf4"
    # so does a field added later while it holds its default (what those builds ran as); set, it counts
    assert spec_hash(parse_spec(tiny_spec(calibration={"refit": False}))) == spec_hash(spec)
    assert spec_hash(parse_spec(tiny_spec(calibration={"refit": True}))) != spec_hash(spec)


def test_refit_fits_the_stitching_layers_again_through_the_trained_anchors(regs, tmp_path):
    from stitchframe import calibrate
    from stitchframe.checkpoint import latest_checkpoint
    from stitchframe.io import load_module_state

    raw = tiny_spec(
        anchors=["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
        calibration={"batches": 3, "heads": True, "refit": True},
        train={"epochs": 2, "max_steps": 6, "batch_size": 16, "lr": 1e-2, "freeze": ["batchnorm"]},
    )
    spec = parse_spec(raw)
    out = tmp_path / "out"
    res = _build(regs, out, spec=raw)
    assert "refit" in json.loads((out / "build.json").read_text())["seconds"]
    built = res.snnet.state_dict()
    # the end of training, before the refit
    trained = load_snnet(out, regs)
    load_module_state(trained, latest_checkpoint(out / "checkpoints") / "model.safetensors", kind="checkpoint")
    after_training = trained.state_dict()
    stitches = [k for k in built if k.startswith("stitches.")]
    assert stitches and any(not torch.equal(built[k], after_training[k]) for k in stitches)
    for k, v in built.items():  # the anchors and their classifiers are left as trained
        if not k.startswith("stitches."):
            assert torch.equal(v, after_training[k]), k
    # the refit is calibration's least squares, on the calibration batches, through the trained anchors
    splits = _splits(spec, regs, trained)
    calibrate(trained, pipeline._CalibrationBatches(spec, splits), ridge=spec.calibration.ridge,
              share_fit=spec.calibration.share_fit, augment=spec.calibration.augment, seed=spec.seed)
    for k in stitches:
        torch.testing.assert_close(trained.state_dict()[k], built[k], rtol=1e-5, atol=1e-6)
    # the saved, refit weights are the ones the build evaluated
    again = evaluate_routes(load_snnet(out, regs), splits.val, batch_size=spec.eval.batch_size)
    routes = json.loads((out / "routes.json").read_text())["routes"]
    assert [r["accuracy"] for r in routes] == [r.accuracy for r in again.routes]


def _splits(spec, regs, net):
    from stitchframe.datasets import agreed_preprocess, load_data

    return load_data(spec, regs, agreed_preprocess(list(net.anchors.values()), spec.data.img_size)[0])
