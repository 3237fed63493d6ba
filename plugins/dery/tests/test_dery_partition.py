"""Partition of every anchor into K CKA-aligned stages."""

from __future__ import annotations

import itertools

import pytest
import torch
from _dery_cases import FAST
from stitchframe_dery import DeryOptions, DerySpace
from stitchframe_dery.partition import best_cuts, flops_cuts, partition
from stitchframe_dery.similarity import similarity

from stitchframe import SpecError
from tests import tiny


def _brute_force(gain: torch.Tensor) -> tuple[int, ...]:
    nb, width = gain.shape
    best = max(
        itertools.combinations(range(1, width - 1), nb),
        key=lambda cuts: (sum(float(gain[k, q]) for k, q in enumerate(cuts)), [-q for q in cuts]),
    )
    return tuple(best)


@pytest.mark.parametrize("seed", range(6))
def test_best_cuts_is_the_best_increasing_assignment(seed):
    g = torch.Generator().manual_seed(seed)
    depth, nb = 5 + seed, 1 + seed % 4
    gain = torch.rand(nb, depth + 1, generator=g, dtype=torch.float64)
    cuts = best_cuts(gain)
    assert list(cuts) == sorted(set(cuts)) and 1 <= cuts[0] and cuts[-1] <= depth - 1
    assert cuts == _brute_force(gain)


def test_best_cuts_breaks_ties_towards_early_cut_points():
    assert best_cuts(torch.zeros(2, 7)) == (1, 2)


def test_flops_cuts_balance_the_reference(mixed_zoo):
    vit = mixed_zoo[2]  # four equal blocks: two stages split in the middle
    assert flops_cuts(vit, 2) == (2,)
    assert flops_cuts(vit, 4) == (1, 2, 3)


def test_partition_is_valid_and_aligned(mixed_zoo, probe):
    sim = similarity(mixed_zoo, probe)
    part = partition(mixed_zoo, sim, 3)
    assert part.reference == "vit48"  # the costliest
    assert part.cuts["vit48"] == (0, *flops_cuts(mixed_zoo[2], 3), 4)
    for a in mixed_zoo:
        cuts = part.cuts[a.name]
        assert cuts[0] == 0 and cuts[-1] == a.depth and all(x < y for x, y in itertools.pairwise(cuts))
        assert [part.stage(a.name, k) for k in range(3)] == list(itertools.pairwise(cuts))
    assert 0.0 < part.score <= 1.0


def test_an_identical_copy_is_cut_like_the_reference(probe):
    a = tiny.vit_anchor(tiny.tiny_vit(32, 4, seed=5), "ref")
    b = tiny.vit_anchor(tiny.tiny_vit(32, 4, seed=5), "copy")  # same weights: CKA 1 at equal cut points
    c = tiny.cnn_anchor(tiny.tiny_cnn(16, seed=0), "cnn")
    for stages in (2, 3, 4):
        part = partition([a, b, c], similarity([a, b, c], probe), stages, reference="ref")
        assert part.cuts["copy"] == part.cuts["ref"]


def test_partition_is_deterministic_for_a_seed(mixed_zoo):
    space = DerySpace(DeryOptions(**FAST, seed=3, probe="synthetic"))
    runs = [space.search(mixed_zoo, lambda *a: True) for _ in range(2)]
    assert runs[0].partition == runs[1].partition
    assert torch.equal(runs[0].similarity.matrix, runs[1].similarity.matrix)


def test_partition_errors_name_the_option(mixed_zoo, probe):
    sim = similarity(mixed_zoo, probe)
    with pytest.raises(SpecError, match=r"stitch.space_options.reference: 'vit99' is not an anchor; anchors: cnn16"):
        partition(mixed_zoo, sim, 3, reference="vit99")
    with pytest.raises(SpecError, match=r"stitch.space_options.stages: 5 stages need anchors of at least 5 blocks"):
        partition(mixed_zoo, sim, 5)
    with pytest.raises(SpecError, match=r"reference: 'cnn16' has 3 blocks, fewer than stages=4"):
        partition(mixed_zoo, sim, 4, reference="cnn16")


def test_anchors_with_too_few_blocks_are_left_out(mixed_zoo, probe):
    part = partition(mixed_zoo, similarity(mixed_zoo[1:], probe), 4)
    assert part.skipped == ("cnn16",) and set(part.cuts) == {"vit32", "vit48"}
