"""The ``segmentation`` task and the segmentation datasets, used from a spec through ``stitchframe build``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from stitchframe_dense import (
    FASHION_MASK_CLASSES,
    SegmentationTask,
    evaluate_segmentation,
    load_fashion_mnist_masks,
    load_shapes,
    metrics_from_confusion,
)
from stitchframe_dense.options import FASHION_MNIST_ROOT, FashionMNISTMasksOptions, SegmentationOptions, ShapesOptions

import stitchframe
from stitchframe import cli

PRE = stitchframe.Preprocess(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _vit(name: str, dim: int) -> dict:
    kwargs = {"patch_size": 4, "embed_dim": dim, "depth": 4, "num_heads": 2}
    return {"source": "timm:vit_tiny_patch16_224", "name": name,
            "options": {"img_size": 32, "num_classes": 4, "model_kwargs": kwargs}}


def _spec(**over) -> dict:
    spec = {
        "anchors": [_vit("vit32", 32), _vit("vit48", 48)],
        "stitch": {"space": "snnet", "space_options": {"kernel": 2, "stride": 2}},
        "task": {"name": "segmentation", "options": {"channels": 16, "head_dim": 16}},
        "calibration": {"batches": 2, "batch_size": 16, "augment": 0},
        "data": {"name": "shapes", "options": {"train_size": 128, "val_size": 32}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 1.0e-3, "warmup_steps": 2, "log_every": 4},
        "eval": {"batch_size": 16},
        "device": "cpu",
    }
    return {**spec, **over}


@pytest.fixture(scope="module")
def dense_regs():
    """Built-ins, timm and this plugin, as the CLI loads them (the entry points named here only)."""
    import stitchframe_timm

    import stitchframe_dense

    pm = stitchframe.get_plugin_manager(load_entrypoints=False)
    pm.register_plugin(stitchframe_timm, name="timm")
    pm.register_plugin(stitchframe_dense, name="dense")
    return stitchframe.load_registries(pm)


def test_build_trains_and_evaluates_every_route_on_miou(tmp_path, monkeypatch, capsys, dense_regs):
    """End to end through `stitchframe build`: every route trained and evaluated on mIoU, the report ranks by it."""
    monkeypatch.setenv("STITCHFRAME_LOAD_PLUGINS", "")  # the CLI loads exactly these two, installed or not
    monkeypatch.setenv("STITCHFRAME_PLUGINS", "stitchframe_timm,stitchframe_dense")
    path, out = tmp_path / "dense.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(_spec()), encoding="utf-8")
    assert cli.main(["build", str(path), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 routes over anchors vit32, vit48" in printed and "miou" in printed  # the route table shows mIoU

    report = json.loads((out / "routes.json").read_text())
    routes = report["routes"]
    assert report["metric"] == "miou" and len(routes) == 10
    assert all(0.0 < r["miou"] <= 100.0 and 0.0 < r["accuracy"] <= 100.0 for r in routes)
    best = max(routes, key=lambda r: r["miou"])
    assert best["pareto"] and report["pareto"] == stitchframe.pareto_front(routes, y="miou")
    assert "| mIoU % | accuracy % |" in (out / "routes.md").read_text()
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["task"] == {"name": "segmentation", "metric": "miou", "metric_label": "mIoU %"}
    losses = manifest["train"]["losses"]
    assert manifest["train"]["steps"] == 16 and sum(losses[-5:]) < sum(losses[:5])  # the head and SN-Net learned

    # the saved SN-Net and head give the report's numbers through the plugin's own evaluator
    assert stitchframe.load_spec(out / "spec.yaml").task.name == "segmentation"
    snnet = stitchframe.load_snnet(out, dense_regs, metrics=out / "routes.json")
    assert snnet.select_for(metric="miou").meta["miou"] == best["miou"]  # routes are chosen by mIoU
    splits = load_shapes(ShapesOptions(train_size=128, val_size=32), PRE)
    model = SegmentationTask(SegmentationOptions(channels=16, head_dim=16)).build_model(snnet, splits)
    stitchframe.load_task_layers(model, snnet, out / "task.safetensors")
    again = evaluate_segmentation(model, splits.val, routes=range(len(snnet.routes)), num_classes=4)
    for r in routes:
        assert again[r["id"]].miou * 100 == pytest.approx(r["miou"], abs=1e-4)
        assert again[r["id"]].pixel_accuracy * 100 == pytest.approx(r["accuracy"], abs=1e-4)
    assert len({round(r["loss"], 6) for r in routes}) > 1  # every route is its own
    # and `stitchframe evaluate` reloads the task with the build
    evaluation = stitchframe.evaluate_build(out, registries=dense_regs)
    assert [r.metrics["miou"] for r in evaluation.routes] == pytest.approx([r["miou"] for r in routes], abs=1e-6)

    # `stitchframe export` picks a route by mIoU and exports the SN-Net route alone: the head stays behind, and
    # the manifest and the command say so
    capsys.readouterr()
    assert cli.main(["export", str(out), "--max-flops", str(max(r["flops"] for r in routes))]) == 0
    assert "note: task 'segmentation': the SN-Net route only" in capsys.readouterr().out
    (desc,) = (out / "exports").glob("*.json")
    manifest = json.loads(desc.read_text())
    assert routes[manifest["route_id"]]["miou"] == best["miou"]
    assert manifest["task"]["exported"] is False and manifest["classes"] is None
    module = stitchframe.load_route(desc, dense_regs)
    assert module(splits.val[0][0][None]).shape == (1, 4)  # the end anchor's own head (num_classes 4), no mask


def test_batch_stats_add_up_to_the_metrics_of_all_pixels():
    task = SegmentationTask()
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 4, 8, 8, generator=g), torch.randint(0, 4, (6, 8, 8), generator=g)
    stats = [a + b for a, b in zip(task.batch_stats(logits[:2], target[:2]), task.batch_stats(logits[2:], target[2:]))]
    metrics = task.metrics(stats)
    whole = metrics_from_confusion(torch.tensor(stats[:16]).reshape(4, 4))
    assert metrics["miou"] == pytest.approx(100 * whole.miou)
    assert metrics["accuracy"] == pytest.approx(100 * (logits.argmax(1) == target).float().mean().item())
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-5)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"task": {"name": "classification"}},
         r"task: classification needs one class per example, but the dataset gives targets of shape \(32, 32\)"),
        ({"data": {"name": "synthetic", "options": {"num_classes": 4}}},
         r"task: segmentation needs an integer mask \[H, W\] per image, but data 'synthetic' gives one class "
         r"per image \(0\); use a segmentation dataset"),
        ({"train": {"loss": "distill"}}, r"train\.loss: 'distill' distils class logits; task 'segmentation'"),
        ({"eval": {"latency": True}}, r"eval\.latency: latency is measured on the SN-Net's routes"),
    ],
)
def test_data_and_settings_that_do_not_fit_the_task(tmp_path, dense_regs, over, message):
    spec = stitchframe.parse_spec(_spec(**over))
    with pytest.raises(stitchframe.SpecError, match=message):
        stitchframe.build(spec, output=tmp_path / "out", registries=dense_regs)


def test_task_options_are_checked_by_validate(dense_regs):
    spec = _spec(task={"name": "segmentation", "options": {"fractions": [0.5, 1.0], "strides": [8, 16, 32]}})
    with pytest.raises(stitchframe.SpecError, match=r"task\.options.*'strides' has 3 values for 2 fractions"):
        stitchframe.validate_spec(stitchframe.parse_spec(spec), dense_regs)
    spec = _spec(task={"name": "segmentation", "options": {"fractions": [0.75, 0.5]}})
    with pytest.raises(stitchframe.SpecError, match=r"task\.options.*'fractions' must be increasing"):
        stitchframe.validate_spec(stitchframe.parse_spec(spec), dense_regs)
    assert stitchframe.validate_spec(stitchframe.parse_spec(_spec()), dense_regs) == []


def test_shapes_dataset_follows_the_anchors_preprocessing():
    splits = load_shapes(ShapesOptions(train_size=8, val_size=4, seed=2), PRE)
    image, mask = splits.train[3]
    assert (len(splits.train), len(splits.val), splits.num_classes) == (8, 4, 4)
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.long
    assert not torch.equal(splits.val[3][1], mask)  # the validation split has its own seed


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT, "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
def test_fashion_mnist_masks_label_the_garment_pixels():
    splits = load_fashion_mnist_masks(FashionMNISTMasksOptions(train_size=16, val_size=16), PRE)
    assert splits.num_classes == 11 and splits.classes == FASHION_MASK_CLASSES
    raw = stitchframe.read_idx(Path(FASHION_MNIST_ROOT, "t10k-labels-idx1-ubyte.gz"))
    for i in range(4):
        image, mask = splits.val[i]
        label = int(raw[splits.val.indices[i]])
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
        assert set(mask.unique().tolist()) == {0, label + 1}  # background and this garment's class
        # the garment is where the image is bright: its mean pixel is above the background's
        gray = image.mean(0)
        assert gray[mask > 0].mean() > gray[mask == 0].mean()


def test_fashion_mnist_masks_name_the_missing_files(tmp_path):
    with pytest.raises(stitchframe.SpecError, match=r"data\.options\.root: train-images-idx3-ubyte\.gz.*not found"):
        load_fashion_mnist_masks(FashionMNISTMasksOptions(root=str(tmp_path)), PRE)
