"""End to end: a tiny teacher trained on digits, distilled into three students, stitched into one SN-Net."""

from __future__ import annotations

import pytest
import stitchframe_learngene
import torch
import torch.nn.functional as F
from _learngene_cases import digits_tensors, toy_model
from safetensors.torch import save_file
from stitchframe_learngene import PoolOptions

import stitchframe
from stitchframe import TrainSpec, structure_options, train_snnet

STUDENTS = [
    {"name": "s24", "width": 24, "depth": 2, "heads": 2},
    {"name": "s32", "width": 32, "depth": 4, "heads": 2},
    {"name": "s48", "width": 48, "depth": 4, "heads": 2},
]


def _accuracies(net: stitchframe.SNNet) -> list[float]:
    x, y = digits_tensors()
    with torch.no_grad():
        return [
            (net.forward_route(x[1400:], i).argmax(-1) == y[1400:]).float().mean().item()
            for i in range(len(net.routes))
        ]


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """A toy ViT (width 64, depth 4) trained for a few seconds on digits; its weights file."""
    x, y = digits_tensors()
    torch.manual_seed(0)
    model = toy_model(64, 4).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, 1400, (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file(model.state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def pool(teacher_weights, tmp_path_factory):
    """The pool options every anchor shares."""
    return {
        "teacher": "toyvit:64",
        "teacher_options": {"weights": teacher_weights},
        "students": STUDENTS,
        "data": {"name": "digits16"},
        "distill": {"steps": 250, "batch_size": 32, "lr": 2e-3},
        "cache_dir": str(tmp_path_factory.mktemp("cache")),
    }


def _net(pool, regs, layer="learngene"):
    spec = stitchframe.parse_spec(
        {
            "anchors": [{"source": f"learngene:{s['name']}", "options": pool} for s in STUDENTS],
            "stitch": {"space": "learngene", "layer": layer},
        }
    )
    return stitchframe.assemble(spec, regs)


@pytest.fixture(scope="module")
def net(pool, regs):
    """The SN-Net over the three students; building it distils them (once: the others hit the cache)."""
    return _net(pool, regs)


def test_pool_routes_span_the_students(net, pool, regs, tmp_path):
    assert [a.name for a in net.anchors.values()] == ["s24", "s32", "s48"]
    assert {r.meta["kind"] for r in net.routes} == {"anchor", "sl", "ls"}
    stitched = [i for i, r in enumerate(net.routes) if not r.is_anchor]
    assert all(net.stitch_for(net.routes[i], 0).from_transforms for i in stitched)

    # the composed transformations carry the mapping: far better than an uncalibrated linear stitch
    accs = _accuracies(net)
    random_accs = _accuracies(_net(pool, regs, layer="linear"))
    mean = sum(accs[i] for i in stitched) / len(stitched)
    random_mean = sum(random_accs[i] for i in stitched) / len(stitched)
    assert mean > random_mean + 0.2, (mean, random_mean)

    x, y = digits_tensors()
    cfg = TrainSpec(
        epochs=100, max_steps=600, batch_size=32, lr=3e-4, stitch_lr=3e-3, weight_decay=0.0, log_every=10**6
    )
    train_snnet(net, torch.utils.data.TensorDataset(x[:1400], y[:1400]), cfg, device="cpu", checkpoint_dir=tmp_path)
    accs = _accuracies(net)
    by_anchor = {r.segments[0].anchor: a for r, a in zip(net.routes, accs) if r.is_anchor}
    assert min(by_anchor.values()) > 0.6  # the students learned the task from the teacher alone
    for i in stitched:
        ends = [by_anchor[s.anchor] for s in net.routes[i].segments]
        assert min(ends) - 0.15 <= accs[i] <= max(ends) + 0.05, (net.routes[i].describe(), accs[i], ends)
    assert len({round(a, 3) for a in accs}) > 3  # routes differ: an elastic family, not one model


def test_a_cached_pool_is_not_distilled_again(net, pool, regs, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("distil() called although every student is cached")

    monkeypatch.setattr(stitchframe_learngene.adapter, "distil", refuse)
    options = structure_options(PoolOptions, pool, "pool")
    again = stitchframe_learngene.load_pool(options, regs)
    first = stitchframe_learngene.load_pool(options, regs, ["s32"])["s32"]
    assert all(anchor.learngene.teacher_positions[-1] == 4 for anchor in again.values())
    for (k, a), b in zip(again["s32"].state_dict().items(), first.state_dict().values()):
        assert torch.equal(a, b), k
    assert sorted(p.name.split("-")[0] for p in stitchframe_learngene.cache_dir(options).iterdir()) == [
        "s24",
        "s32",
        "s48",
    ]


def test_the_teacher_joins_its_pool_with_identity_transformations(pool, regs):
    teacher = stitchframe.load_anchor(stitchframe.AnchorSpec(source="learngene:teacher", options=pool), regs)
    student = stitchframe.load_anchor(stitchframe.AnchorSpec(source="learngene:s32", options=pool), regs)
    assert teacher.learngene.pool == student.learngene.pool
    net = stitchframe.build_snnet([student, teacher], space="learngene", layer="learngene", registries=regs)
    route = next(r for r in net.routes if r.describe().startswith("s32[0:2]"))
    layer = net.stitch_for(route, 0)
    w, b = student.learngene.to_teacher[2]  # into the teacher, the stitch is the student's own transformation
    torch.testing.assert_close(layer.weight.double(), w)
    torch.testing.assert_close(layer.bias.double(), b)


def test_an_exported_route_reloads_without_the_pool_cache_or_distillation(net, pool, regs, tmp_path, monkeypatch):
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    res = stitchframe.export_route(net, route=rid, dest=tmp_path / "r.safetensors", registries=regs)

    def refuse(*args, **kwargs):
        raise AssertionError("a standalone route must not distil or read the student cache")

    monkeypatch.setattr(stitchframe_learngene.adapter, "distil", refuse)
    monkeypatch.setattr(stitchframe_learngene.adapter, "load_student", refuse)
    module = stitchframe.load_route(res.description, regs)
    x, _ = digits_tensors()
    with torch.no_grad():
        assert torch.equal(module(x[:16]), net.eval().forward_route(x[:16], rid))
