"""Deterministic sampling for training: which route each step trains, and which samples it sees.

Everything here is a pure function of ``(seed, step)`` or ``(seed, epoch)``,
never of a process-local random state, so:

* every DDP rank picks the same route at the same step without talking;
* a resumed run sees the same routes and the same data as an uninterrupted one.

Route samplers (``TrainSpec.sampling``):

* ``uniform`` - every route equally often (each step an independent draw);
* ``cyclic`` - every route exactly once in every cycle of ``len(routes)``
  steps, in a new random order each cycle; with ``anchor_share`` the anchor
  steps are also spread evenly over the run and the anchors taken in turn,
  so every anchor gets the same number of direct steps, early and late;
* ``flops_grouped`` - SN-Netv2's resource-constrained sampling: the FLOPs range
  of the routes is split into ``flops_groups`` equal-width intervals (empty
  ones dropped), a group is drawn uniformly, then a route inside it, so cheap
  and expensive regions of the trade-off are trained equally often however
  many routes each holds.

Data order: epoch ``e`` visits the samples in a permutation seeded by
``(seed, e)``; each step takes the next global batch from it, split into
micro-batches (gradient accumulation) and then into one slice per rank.
Each sample also gets a seed derived from ``(seed, e)`` that seeds the random
generators while it is loaded, so random augmentations are the same with any
number of workers or ranks, and after a resume.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .errors import SpecError
from .routes import Route

__all__ = [
    "RouteSampler",
    "UniformSampler",
    "FlopsGroupedSampler",
    "CyclicSampler",
    "AnchorShareSampler",
    "make_sampler",
    "flops_groups",
    "EpochOrder",
    "SeededDataset",
]


def hash_ints(*values: int) -> tuple[int, int]:
    """Two independent 64-bit integers from a tuple of ints (portable, stateless)."""
    digest = hashlib.blake2b(":".join(str(int(v)) for v in values).encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


class RouteSampler:
    """Picks the route of every optimizer step from ``(seed, step)`` alone.

    Args:
        routes: The SN-Net's routes (their order defines route ids).
        seed: The run's seed.
    """

    name = "base"

    def __init__(self, routes: Sequence[Route], *, seed: int) -> None:
        if len(routes) == 0:
            raise SpecError("train.sampling: the SN-Net has no routes to sample")
        self.num_routes = len(routes)
        self.seed = int(seed)

    def route_at(self, step: int) -> int:
        """Route id trained at optimizer step ``step`` (0-based)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """JSON-ready description; equal states mean equal sequences."""
        return {"kind": self.name, "seed": self.seed, "routes": self.num_routes}


class UniformSampler(RouteSampler):
    """Every route with probability ``1 / len(routes)``."""

    name = "uniform"

    def route_at(self, step: int) -> int:
        a, _ = hash_ints(self.seed, step, 0x5EED)
        return a % self.num_routes


def cycle_order(seed: int, cycle: int, n: int, salt: int) -> list[int]:
    """The order of ``range(n)`` in cycle ``cycle``: a permutation seeded by ``(seed, cycle, salt)``."""
    return sorted(range(n), key=lambda i: hash_ints(seed, cycle, salt, i))


class CyclicSampler(RouteSampler):
    """Every route once in every cycle of ``len(routes)`` steps, in a new random order each cycle.

    Uniform sampling draws every step independently, so over a short run some
    routes are trained twice as often as others; here the counts differ by at
    most one.
    """

    name = "cyclic"

    def route_at(self, step: int) -> int:
        cycle, pos = divmod(step, self.num_routes)
        return cycle_order(self.seed, cycle, self.num_routes, 0xC7C1)[pos]


def flops_groups(flops: Sequence[float], groups: int) -> list[list[int]]:
    """Split route ids into at most ``groups`` equal-width FLOPs intervals.

    Args:
        flops: FLOPs of every route, by route id.
        groups: Number of intervals between the smallest and largest FLOPs.

    Returns:
        The non-empty groups, cheapest first, each a sorted list of route ids.
    """
    lo, hi = min(flops), max(flops)
    width = (hi - lo) / groups
    buckets: list[list[int]] = [[] for _ in range(groups)]
    for i, f in enumerate(flops):
        k = groups - 1 if width == 0 or f >= hi else min(groups - 1, int((f - lo) / width))
        buckets[k].append(i)
    return [b for b in buckets if b]


class FlopsGroupedSampler(RouteSampler):
    """SN-Netv2's resource-constrained sampling: a FLOPs group uniformly, then a route in it.

    Args:
        routes: The routes; their ``flops`` must be known.
        seed: The run's seed.
        groups: Number of equal-width FLOPs intervals.
    """

    name = "flops_grouped"

    def __init__(self, routes: Sequence[Route], *, seed: int, groups: int) -> None:
        super().__init__(routes, seed=seed)
        missing = [str(r) for r in routes if r.flops is None]
        if missing:
            raise SpecError(
                f"train.sampling: 'flops_grouped' needs route FLOPs, but {missing[0]!r} has none; "
                "build the SN-Net with stitchframe.build_snnet or use sampling: uniform"
            )
        self.groups = flops_groups([r.flops for r in routes], groups)
        self.requested_groups = groups

    def route_at(self, step: int) -> int:
        a, b = hash_ints(self.seed, step, 0xF10B)
        group = self.groups[a % len(self.groups)]
        return group[b % len(group)]

    def state(self) -> dict[str, Any]:
        return {**super().state(), "flops_groups": self.requested_groups, "groups": self.groups}


class AnchorShareSampler(RouteSampler):
    """A fixed share of the steps trains an anchor; the others sample the stitched routes.

    An anchor route is shared by every route that starts or ends in it, but
    uniform sampling trains it directly once in ``len(routes)`` steps, so the
    anchors fall behind the same models fine-tuned alone.  Here a step is an
    anchor step with probability ``share`` (the anchor drawn uniformly);
    the other steps pick a stitched route with ``base`` (built on the
    stitched routes only).  Like every sampler, a pure function of
    ``(seed, step)``.

    Args:
        routes: The routes (anchors among them).
        seed: The run's seed.
        share: Fraction of steps that train an anchor, in ``[0, 1]``.
        base: Builds the sampler of the stitched routes from ``(routes, seed)``.
        spread: Instead of drawing, make exactly ``share`` of every stretch of steps anchor steps, evenly
            spaced, take the anchors in turn, and give ``base`` the count of stitched steps so far
            (``sampling: cyclic``).
    """

    name = "anchor_share"

    def __init__(self, routes: Sequence[Route], *, seed: int, share: float, base, spread: bool = False) -> None:
        super().__init__(routes, seed=seed)
        self.spread = bool(spread)
        self.anchors = [i for i, r in enumerate(routes) if r.is_anchor]
        self.stitched = [i for i, r in enumerate(routes) if not r.is_anchor]
        if not self.anchors or not self.stitched:  # nothing to mix: the base sampler over everything
            share = 1.0 if not self.stitched else 0.0
            self.stitched = self.stitched or self.anchors
        self.share = float(share)
        self.base = base([routes[i] for i in self.stitched], seed)

    def route_at(self, step: int) -> int:
        if self.spread:
            return self._spread_route_at(step)
        a, b = hash_ints(self.seed, step, 0xA7C0)
        if self.anchors and a / 2.0**64 < self.share:
            return self.anchors[b % len(self.anchors)]
        return self.stitched[self.base.route_at(step)]

    def _spread_route_at(self, step: int) -> int:
        # Step n is the k-th anchor step when floor((n + 1) * share) steps up to it are anchor steps and the
        # count grows at n: exactly that share of every prefix of the run, spread evenly. The anchors go
        # in turn (a new order every round), the other steps walk the base sampler over the stitched routes.
        done = math.floor((step + 1) * self.share)
        if self.anchors and done > math.floor(step * self.share):
            k = done - 1
            rnd, pos = divmod(k, len(self.anchors))
            return self.anchors[cycle_order(self.seed, rnd, len(self.anchors), 0xA7C1)[pos]]
        return self.stitched[self.base.route_at(step - done)]

    def state(self) -> dict[str, Any]:
        state = {**super().state(), "share": self.share, "base": self.base.state()}
        return {**state, "spread": True} if self.spread else state


def make_sampler(
    kind: str, routes: Sequence[Route], *, seed: int, groups: int = 8, anchor_share: float = 0.0
) -> RouteSampler:
    """The route sampler named ``kind`` (``uniform``, ``cyclic`` or ``flops_grouped``).

    With ``anchor_share > 0`` that share of the steps trains an anchor and
    ``kind`` samples the other steps among the stitched routes
    (:class:`AnchorShareSampler`).

    Raises:
        SpecError: Unknown ``kind`` (names ``train.sampling`` and the choices).
    """
    if kind == "uniform":
        def base(rs, s):
            return UniformSampler(rs, seed=s)
    elif kind == "cyclic":
        def base(rs, s):
            return CyclicSampler(rs, seed=s)
    elif kind == "flops_grouped":
        def base(rs, s):
            return FlopsGroupedSampler(rs, seed=s, groups=groups)
    else:
        raise SpecError(f"train.sampling: unknown sampler {kind!r}; choose one of uniform, cyclic, flops_grouped")
    if anchor_share > 0:
        return AnchorShareSampler(routes, seed=seed, share=anchor_share, base=base, spread=kind == "cyclic")
    return base(routes, seed)


class EpochOrder:
    """The samples every rank loads at every step, from ``(seed, epoch)``.

    Args:
        num_samples: Length of the dataset.
        batch_size: Global batch per optimizer step.
        grad_accum: Micro-batches per step.
        world_size: Number of ranks.
        rank: This rank.
        seed: The run's seed.

    Raises:
        SpecError: The batch does not split evenly, or the dataset is smaller than one batch.
    """

    def __init__(
        self, num_samples: int, *, batch_size: int, grad_accum: int, world_size: int, rank: int, seed: int
    ) -> None:
        if batch_size % (grad_accum * world_size):
            raise SpecError(
                f"train.batch_size: {batch_size!r} does not split into grad_accum={grad_accum} micro-batches "
                f"on {world_size} rank(s); make it a multiple of {grad_accum * world_size}"
            )
        if num_samples < batch_size:
            raise SpecError(
                f"train.batch_size: {batch_size!r} is larger than the dataset ({num_samples} samples); "
                "lower train.batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.rank = rank
        self.seed = int(seed)
        self.micro = batch_size // (grad_accum * world_size)
        #: Optimizer steps per epoch (the last incomplete batch is dropped).
        self.steps_per_epoch = num_samples // batch_size

    def epoch_tables(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(permutation, sample_seeds)`` of an epoch."""
        g = torch.Generator().manual_seed(hash_ints(self.seed, epoch, 0xDA7A)[0] >> 1)
        perm = torch.randperm(self.num_samples, generator=g)
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=g)
        return perm, seeds

    def micro_batches(self, epoch: int, start_step: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This rank's micro-batches of ``(index, sample_seed)``, from step ``start_step`` of ``epoch`` on."""
        perm, seeds = self.epoch_tables(epoch)
        chunk = self.batch_size // self.grad_accum
        for step in range(start_step, self.steps_per_epoch):
            base = step * self.batch_size
            for m in range(self.grad_accum):
                lo = base + m * chunk + self.rank * self.micro
                idx = perm[lo : lo + self.micro].tolist()
                yield list(zip(idx, seeds[lo : lo + self.micro].tolist()))


class SeededDataset(Dataset):
    """Wraps a map-style dataset; item ``(index, seed)`` loads ``dataset[index]`` under ``seed``.

    ``torch``, ``random`` and ``numpy`` are seeded from ``seed`` while the item
    loads, so random transforms depend only on the sample's seed.  In the main
    process (``num_workers=0``) the previous generator states are restored
    afterwards, so training randomness (dropout) is not disturbed.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        """Load a batch of ``(index, seed)`` items (the DataLoader's batched fetch)."""
        if get_worker_info() is not None:
            return [self._load(index, seed) for index, seed in keys]
        saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        try:
            return [self._load(index, seed) for index, seed in keys]
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])

    def _load(self, index: int, seed: int) -> Any:
        _seed_all(seed)
        return self.dataset[index]


def _seed_all(seed: int) -> None:
    # torch.random.default_generator, not torch.manual_seed: that would also reseed CUDA.
    torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
