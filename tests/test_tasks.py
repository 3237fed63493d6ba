"""Tasks: a task's own layers saved and loaded apart from the SN-Net, the generic evaluator, the build's checks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import stitchframe
from stitchframe import CheckpointError, ClassificationTask, SpecError
from stitchframe.tasks import evaluate_task_routes, load_task_layers, save_task_layers
from tests import tiny


@pytest.fixture
def net(vit_family):
    return stitchframe.build_snnet(vit_family)


def _data(n: int = 20):
    return torch.utils.data.TensorDataset(tiny.images(n, seed=4), torch.arange(n) % 10)


def test_task_layers_are_saved_without_the_snnet_and_loaded_back(net, tmp_path):
    model = tiny.Rescaled(net)
    with torch.no_grad():
        model.scale.copy_(torch.linspace(0.5, 2.0, 10))
    path = save_task_layers(model, net, tmp_path / "task.safetensors", {"stage": "trained"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert list(fh.keys()) == ["scale"] and fh.metadata()["stage"] == "trained"
    fresh = tiny.Rescaled(net)
    load_task_layers(fresh, net, path)
    assert torch.equal(fresh.scale, model.scale)
    with pytest.raises(CheckpointError, match=r"does not hold this task's layers \(e\.g\. 'scale'"):
        load_task_layers(nn.Sequential(net), net, path)
    with pytest.raises(CheckpointError, match=r"tensor 'scale' has shape \(10,\), the task's layer has \(4,\)"):
        load_task_layers(tiny.Rescaled(net, classes=4), net, path)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors' does not exist"):
        load_task_layers(fresh, net, tmp_path / "missing.safetensors")


def test_generic_evaluation_matches_the_shared_prefix_evaluator_and_resumes(net, tmp_path):
    data, task = _data(), ClassificationTask()
    ref = stitchframe.evaluate_routes(net, data, batch_size=8, record=False)
    path = tmp_path / "progress.jsonl"
    got = evaluate_task_routes(net, net, task, data, batch_size=8, partial_path=path, fingerprint="w")
    for a, b in zip(got.routes, ref.routes):
        assert a.accuracy == pytest.approx(b.accuracy) and a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.samples == 20 and net.routes[a.id].meta["accuracy"] == a.accuracy
    assert got.batches == 3 and got.resumed_batches == 0
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n")  # header and two batches survive an interruption
    again = evaluate_task_routes(net, net, task, data, batch_size=8, partial_path=path, fingerprint="w")
    assert again.resumed_batches == 2 and [r.accuracy for r in again.routes] == [r.accuracy for r in got.routes]
    assert json.loads(path.read_text().splitlines()[-1])["batch"] == 2


def test_metrics_must_include_accuracy_loss_and_the_metric(net):
    class NoLoss(ClassificationTask):
        metric = "hits"

        def metrics(self, stats):
            return {"accuracy": stats[0], "hits": stats[0]}

    with pytest.raises(stitchframe.StitchframeError, match=r"NoLoss\.metrics\(\) returned no loss"):
        evaluate_task_routes(net, net, NoLoss(), _data(8), batch_size=8)


def test_a_task_model_must_hold_the_snnet(pm, tmp_path):
    class Detached(ClassificationTask):
        def build_model(self, snnet, splits):
            return nn.Linear(3, 3)

    class DetachedPlugin:
        @staticmethod
        @stitchframe.hookimpl
        def stitchframe_register_tasks(register):
            register("detached", Detached)

    pm.register_plugin(DetachedPlugin, name="detached")
    pm.register_plugin(tiny.TinyPlugin, name="tiny")
    regs = stitchframe.load_registries(pm)
    spec = {"anchors": ["tiny:vit32"], "data": {"name": "synthetic", "options": {"train_size": 8, "val_size": 8}},
            "task": {"name": "detached"}}
    with pytest.raises(SpecError, match=r"task 'detached': build_model returned a Linear that does not hold the SN-Net"):
        stitchframe.build(stitchframe.parse_spec(spec), output=tmp_path / "out", registries=regs)
    spec["calibration"] = {"heads": True}
    with pytest.raises(SpecError, match=r"calibration\.heads fits the anchors' classifiers.*calibration\.heads: false"):
        stitchframe.build(stitchframe.parse_spec(spec), output=tmp_path / "out", registries=regs)
