from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from stitchframe import Route, SpecError
from stitchframe.sampling import (
    EpochOrder,
    FlopsGroupedSampler,
    SeededDataset,
    UniformSampler,
    flops_groups,
    make_sampler,
)


def routes_with_flops(flops):
    return [Route.chain((f"a{i}", 0, 1), flops=f, params=1) for i, f in enumerate(flops)]


def test_uniform_covers_every_route_evenly():
    s = UniformSampler(routes_with_flops(range(12)), seed=0)
    counts = Counter(s.route_at(step) for step in range(6000))
    assert sorted(counts) == list(range(12))
    assert all(abs(c - 500) < 100 for c in counts.values()), counts


def test_flops_groups_are_equal_width_intervals_without_empty_ones():
    # 0..10 in 4 intervals of width 2.5: [0,2.5) [2.5,5) [5,7.5) [7.5,10]; nothing in [5,7.5)
    assert flops_groups([0, 1, 2, 3, 4, 9, 10, 10], 4) == [[0, 1, 2], [3, 4], [5, 6, 7]]
    assert flops_groups([5, 5, 5], 3) == [[0, 1, 2]]


def test_flops_grouped_gives_each_group_equal_frequency():
    # one cheap route, many expensive ones: uniform would train the cheap region 1/9 of the time
    flops = [1.0] + [10.0 + i * 0.01 for i in range(8)]
    s = FlopsGroupedSampler(routes_with_flops(flops), seed=1, groups=2)
    assert s.groups == [[0], list(range(1, 9))]
    picks = [s.route_at(step) for step in range(4000)]
    cheap = sum(p == 0 for p in picks) / len(picks)
    assert 0.45 < cheap < 0.55
    counts = Counter(p for p in picks if p != 0)
    assert sorted(counts) == list(range(1, 9))  # every route of the big group is reached


def test_samplers_are_pure_functions_of_seed_and_step():
    routes = routes_with_flops([1, 2, 3, 5, 8, 13, 21])
    for kind in ("uniform", "cyclic", "flops_grouped"):
        a = make_sampler(kind, routes, seed=7, groups=3)
        b = make_sampler(kind, routes, seed=7, groups=3)  # e.g. another rank, or a resumed run
        forward = [a.route_at(s) for s in range(200)]
        backward = [b.route_at(s) for s in reversed(range(200))][::-1]
        assert forward == backward
        assert a.state() == b.state()
        other = make_sampler(kind, routes, seed=8, groups=3)
        assert [other.route_at(s) for s in range(200)] != forward


def test_cyclic_trains_every_route_once_per_cycle_in_a_new_order():
    s = make_sampler("cyclic", routes_with_flops(range(7)), seed=4)
    cycles = [[s.route_at(7 * c + i) for i in range(7)] for c in range(5)]
    assert all(sorted(c) == list(range(7)) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # reshuffled, not one fixed order


@pytest.mark.parametrize("share", [0.75, 0.6, 0.85])
def test_cyclic_anchor_share_spreads_the_anchor_steps_and_takes_the_anchors_in_turn(share):
    routes = _family_routes()  # 3 anchors (ids 0-2), then stitched routes
    s = make_sampler("cyclic", routes, seed=2, anchor_share=share)
    picks = [s.route_at(t) for t in range(450)]
    stitched = [p for p in picks if p >= 3]
    n_stitched = len(routes) - 3
    for n in range(1, 451):  # every prefix of the run: the share exactly, the anchors level within one step
        prefix = picks[:n]
        anchor_counts = [prefix.count(a) for a in range(3)]
        assert sum(anchor_counts) == int(n * share + 1e-9)
        assert max(anchor_counts) - min(anchor_counts) <= 1
    counts = Counter(stitched)
    assert max(counts.values()) - min(counts[i] for i in range(3, len(routes))) <= 1  # every stitched route, evenly
    assert len(counts) == n_stitched
    assert s.state()["spread"] is True and s.state()["base"]["kind"] == "cyclic"
    # uniform keeps its independent draws (and its sequence: builds made before cyclic existed resume unchanged)
    assert "spread" not in make_sampler("uniform", routes, seed=2, anchor_share=share).state()


def test_make_sampler_errors():
    with pytest.raises(SpecError, match="train.sampling: unknown sampler 'unifrm'"):
        make_sampler("unifrm", routes_with_flops([1]), seed=0)
    with pytest.raises(SpecError, match="needs route FLOPs"):
        make_sampler("flops_grouped", [Route.chain(("a", 0, 1))], seed=0)


def test_epoch_order_permutes_and_shards_the_global_batch():
    single = EpochOrder(20, batch_size=8, grad_accum=2, world_size=1, rank=0, seed=5)
    ranks = [EpochOrder(20, batch_size=8, grad_accum=2, world_size=2, rank=r, seed=5) for r in range(2)]
    assert single.steps_per_epoch == 2  # last 4 samples dropped
    one = list(single.micro_batches(0))
    two = [list(o.micro_batches(0)) for o in ranks]
    assert len(one) == 4 and all(len(b) == 4 for b in one)
    for m, batch in enumerate(one):  # each micro-batch is split between ranks, in rank order
        assert two[0][m] + two[1][m] == batch
    perm, _ = single.epoch_tables(0)
    assert sorted(perm.tolist()) == list(range(20))
    assert not torch.equal(perm, single.epoch_tables(1)[0])
    assert list(single.micro_batches(0, start_step=1)) == one[2:]


def test_epoch_order_rejects_batches_that_do_not_split():
    with pytest.raises(SpecError, match="train.batch_size: 10 does not split.*multiple of 4"):
        EpochOrder(100, batch_size=10, grad_accum=2, world_size=2, rank=0, seed=0)
    with pytest.raises(SpecError, match="larger than the dataset"):
        EpochOrder(5, batch_size=8, grad_accum=1, world_size=1, rank=0, seed=0)


class RandomAugment(Dataset):
    """Each item draws from torch, random and numpy: a stand-in for random augmentation."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.tensor([i, torch.rand(()).item(), random.random(), np.random.rand()])


@pytest.mark.parametrize("workers", [0, 2])
def test_seeded_dataset_makes_augmentation_depend_on_the_sample_seed_only(workers):
    ds = SeededDataset(RandomAugment())
    keys = [[(0, 11), (1, 12)], [(2, 13), (0, 11)]]
    before = torch.get_rng_state()
    batches = list(DataLoader(ds, batch_sampler=keys, num_workers=workers, generator=torch.Generator()))
    assert torch.equal(torch.get_rng_state(), before)  # the main process's RNG is untouched
    assert torch.equal(batches[0][0], batches[1][1])  # same (index, seed), same augmentation
    assert not torch.equal(batches[0][0][1:], batches[0][1][1:])
    assert torch.equal(ds[(0, 11)], batches[0][0])


def _family_routes():
    anchors = [Route.chain((f"a{i}", 0, 4), flops=10 * (i + 1), params=1) for i in range(3)]
    stitched = [Route.chain(("a0", 0, k), ("a1", k, 4), flops=10 + k, params=1) for k in range(1, 4)]
    stitched += [Route.chain(("a1", 0, k), ("a2", k, 4), flops=20 + k, params=1) for k in range(1, 4)]
    return anchors + stitched


@pytest.mark.parametrize("kind", ["uniform", "cyclic", "flops_grouped"])
def test_anchor_share_trains_the_anchors_that_share_of_the_steps(kind):
    routes = _family_routes()
    s = make_sampler(kind, routes, seed=3, groups=4, anchor_share=0.6)
    picks = [s.route_at(step) for step in range(6000)]
    counts = Counter(picks)
    anchor_steps = sum(counts[i] for i in range(3))
    assert abs(anchor_steps / 6000 - 0.6) < 0.03
    assert all(abs(counts[i] - 1200) < 150 for i in range(3)), counts  # anchors drawn evenly
    assert set(counts) == set(range(len(routes)))  # every stitched route still trained
    assert picks == [make_sampler(kind, routes, seed=3, groups=4, anchor_share=0.6).route_at(t) for t in range(6000)]
    assert s.state()["share"] == 0.6 and s.state()["base"]["kind"] == kind


def test_anchor_share_one_trains_only_anchors_and_zero_is_the_plain_sampler():
    routes = _family_routes()
    only = make_sampler("uniform", routes, seed=0, anchor_share=1.0)
    assert {only.route_at(t) for t in range(500)} == {0, 1, 2}
    plain = make_sampler("uniform", routes, seed=0, anchor_share=0.0)
    assert isinstance(plain, UniformSampler)
