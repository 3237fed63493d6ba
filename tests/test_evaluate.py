from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import stitchframe
from stitchframe import Anchor, Preprocess, build_snnet, calibrate, evaluate_routes
from stitchframe.datasets import SyntheticOptions, load_synthetic
from stitchframe.evaluate import RouteTrie, logits_of
from tests import tiny

PRE = Preprocess(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def data():
    return load_synthetic(SyntheticOptions(train_size=64, val_size=70, seed=1), PRE)


def _net(family, regs, space, data):
    net = build_snnet(family, space=space, registries=regs)
    calibrate(net, DataLoader(data.train, batch_size=32), ridge=1e-3)
    return net.eval()


def _separately(net, dataset, batch_size):
    """Every route on its own: forward_route per route and batch."""
    correct = [0.0] * len(net.routes)
    loss = [0.0] * len(net.routes)
    with torch.no_grad():
        for inputs, target in DataLoader(dataset, batch_size=batch_size):
            for i in range(len(net.routes)):
                logits = logits_of(net.forward_route(inputs, i)).float()
                correct[i] += float((logits.argmax(-1) == target).sum())
                loss[i] += F.cross_entropy(logits, target, reduction="sum").item()
    n = len(dataset)
    return [100 * c / n for c in correct], [v / n for v in loss]


class _BlockCounter:
    def __init__(self, anchors):
        self.calls = 0
        self.handles = [blk.register_forward_hook(self._hook) for a in anchors for blk in a.blocks]

    def _hook(self, *args):
        self.calls += 1

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("space", ["snnet", "snnet2"])
def test_shared_prefixes_give_the_same_results_with_fewer_block_forwards(vit_family, regs, data, space):
    net = _net(vit_family, regs, space, data)
    counter = _BlockCounter(vit_family)
    try:
        ev = evaluate_routes(net, data.val, batch_size=32)
        shared_calls = counter.calls
        counter.calls = 0
        acc, loss = _separately(net, data.val, 32)
        separate_calls = counter.calls
    finally:
        counter.close()
    assert [r.accuracy for r in ev.routes] == acc
    assert [r.loss for r in ev.routes] == loss
    assert ev.batches == 3 and all(r.samples == 70 for r in ev.routes)
    assert shared_calls == ev.block_forwards < separate_calls == ev.naive_block_forwards
    assert ev.block_forwards == 3 * RouteTrie(net).shared_blocks


def test_trie_outputs_are_bit_identical_to_forward_route(cnn_family, regs, data):
    net = _net(cnn_family, regs, "snnet", data)
    x = torch.stack([data.val[i][0] for i in range(5)])
    outs = {}
    with torch.no_grad():
        RouteTrie(net).run(x, lambda rid, out: outs.__setitem__(rid, out))
        assert sorted(outs) == list(range(len(net.routes)))
        for i in range(len(net.routes)):
            assert torch.equal(outs[i], net.forward_route(x, i))


def test_results_are_recorded_on_the_routes_for_select_for(vit_family, regs, data):
    net = _net(vit_family, regs, "snnet", data)
    ev = evaluate_routes(net, data.val, batch_size=64)
    for r, route in zip(ev.routes, net.routes):
        assert route.meta["accuracy"] == r.accuracy and route.meta["loss"] == r.loss
        assert r.flops == route.flops > 0
    budget = sorted(r.flops for r in net.routes)[len(net.routes) // 2]
    best = max((r for r in ev.routes if r.flops <= budget), key=lambda r: (r.accuracy, r.flops))
    assert net.select_for(max_flops=budget).meta["accuracy"] == best.accuracy


class _Interrupt(Exception):
    pass


def test_interrupted_evaluation_resumes(vit_family, regs, data, tmp_path):
    net = _net(vit_family, regs, "snnet", data)
    full = evaluate_routes(net, data.val, batch_size=16, record=False)
    path = tmp_path / "partial.jsonl"

    def stop_after_two(done, total):
        if done == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate_routes(net, data.val, batch_size=16, partial_path=path, fingerprint="w1", progress=stop_after_two)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["header"]["fingerprint"] == "w1"
    with open(path, "a") as fh:  # a write cut short by the interruption
        fh.write('{"batch": 2, "samples": 1')
    resumed = evaluate_routes(net, data.val, batch_size=16, partial_path=path, fingerprint="w1")
    assert resumed.resumed_batches == 2 and resumed.batches == full.batches == 5
    assert resumed.block_forwards == 3 * RouteTrie(net).shared_blocks  # only the remaining batches ran
    assert [(r.accuracy, r.samples) for r in resumed.routes] == [(r.accuracy, r.samples) for r in full.routes]
    assert [r.loss for r in resumed.routes] == [r.loss for r in full.routes]
    again = evaluate_routes(net, data.val, batch_size=16, partial_path=path, fingerprint="other weights")
    assert again.resumed_batches == 0  # a stale file is discarded


def test_max_batches_and_latency(vit_family, regs, data):
    net = _net(vit_family, regs, "anchors", data)
    ev = evaluate_routes(net, data.val, batch_size=16, max_batches=2, latency=True, latency_repeats=2)
    assert ev.batches == 2 and all(r.samples == 32 for r in ev.routes)
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in ev.routes)
    assert all(route.meta["latency_ms"] == r.latency_ms for route, r in zip(net.routes, ev.routes))


# -- dict inputs, contexts and outputs with .logits ---------------------------------------------
class _DictStem(nn.Module):
    def __init__(self, embed):
        super().__init__()
        self.embed = embed

    def forward(self, inputs, ctx):
        return self.embed(inputs["pixels"]) * ctx


class _CtxBlock(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x, ctx):
        return self.block(x) * ctx


class _ObjHead(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, x, ctx):
        return types.SimpleNamespace(logits=self.head(x))


def _dict_anchor(dim, seed):
    m = tiny.tiny_vit(dim, seed=seed)
    return Anchor(
        f"d{dim}",
        stem=_DictStem(m.embed),
        blocks=[_CtxBlock(b) for b in m.blocks],
        norm=m.norm,
        head=_ObjHead(m.head),
        prepare=lambda inputs: inputs["gain"].view(-1, 1, 1),
        layout="tokens",
        prefix=1,
        example_inputs={"pixels": torch.randn(1, 3, 16, 16), "gain": torch.ones(1)},
        preprocess=PRE,
    )


class _DictData(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"pixels": x, "gain": torch.tensor(1.0 + 0.01 * (i % 3))}, y


def test_dict_inputs_contexts_and_logits_objects(regs, data):
    family = [_dict_anchor(32, 0), _dict_anchor(48, 1)]
    net = build_snnet(family, space="snnet", registries=regs)
    dataset = _DictData(data.val)
    calibrate(net, DataLoader(dataset, batch_size=32))
    ev = evaluate_routes(net, dataset, batch_size=32)
    acc, loss = _separately(net, dataset, 32)
    assert [r.accuracy for r in ev.routes] == acc and [r.loss for r in ev.routes] == loss
    assert ev.block_forwards < ev.naive_block_forwards


def test_logits_of_rejects_other_outputs():
    assert torch.equal(logits_of({"logits": torch.ones(2, 3)}), torch.ones(2, 3))
    with pytest.raises(stitchframe.StitchframeError, match="needs logits"):
        logits_of(("not", "logits"), "Route 3")
