"""Reassembly: one stage per position from any anchor, costed, scored and searched.

An *assembly* picks an anchor for each of the K stage positions; stage ``k``
of the chosen anchor runs its block range of the :class:`~.partition.Partition`,
consecutive stages of the same anchor merge into one segment, and a
stitching layer joins two anchors at their boundary-``k`` cut points.  So
an assembly is an ordinary multi-segment :class:`stitchframe.Route`
(``A[0:i] -> B[j:k] -> C[l:end]``), trained, evaluated and exported like any
other.  Both directions (CNN into transformer and back) are allowed; a
boundary that ``can_stitch`` (or the layer factory) refuses rules the
assembly out.

Costs are counted exactly as :class:`stitchframe.SNNet` counts a route:
FLOPs of the stem, blocks, stitching layers and head at batch 1, and the
unique parameters of the modules the route runs (stem, context modules,
blocks, stitching layers, final norm unless ``skip_stitched``, head).

Search: with few assemblies every one is scored (``enumerate``); otherwise a
seeded evolution (uniform crossover plus one-stage mutation, parents the best
half by mean proxy rank) explores the ones within each budget.
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from stitchframe import Anchor, Route, SNNet, Segment, calibrate, count_flops, stitch_key

from .options import Budget, DeryOptions
from .partition import Partition
from .proxies import mean_ranks, score_route
from .similarity import move_to

__all__ = ["Assembly", "Reassembler", "Scorer", "effective_budgets", "search_assemblies"]

Genotype = tuple[int, ...]


@attrs.frozen
class Assembly:
    """One chosen assembly.

    Attributes:
        stages: The anchor of each stage position.
        route: The route it runs.
        flops: FLOPs as the route table counts them.
        params: Parameters as the route table counts them.
        scores: Proxy scores.
        rank: Mean proxy rank among the assemblies searched within its budget (0: best).
        budget: Index of its budget.
    """

    stages: tuple[str, ...]
    route: Route
    flops: int
    params: int
    scores: dict[str, float]
    rank: float
    budget: int


def effective_budgets(options: DeryOptions) -> list[Budget]:
    """The budgets to search: ``budgets`` (or one empty budget), each capped by ``max_params``/``max_flops``."""

    def cap(value, limit):
        return limit if value is None else (value if limit is None else min(value, limit))

    budgets = options.budgets or [Budget()]
    return [Budget(max_params=cap(b.max_params, options.max_params), max_flops=cap(b.max_flops, options.max_flops))
            for b in budgets]


def _fits(cost: tuple[int, int], budget: Budget) -> bool:
    flops, params = cost
    return (budget.max_flops is None or flops <= budget.max_flops) and (
        budget.max_params is None or params <= budget.max_params
    )


class Reassembler:
    """Turns genotypes (an anchor index per stage) into routes and costs them.

    Args:
        anchors: The anchors the partition covers, in spec order.
        partition: Their K-stage partition.
        can_stitch: The engine's ``can_stitch``.
        make_stitch: Factory of the stitching layers the engine will build.
        final_norm: The SN-Net's final-norm policy.
    """

    def __init__(self, anchors: Sequence[Anchor], partition: Partition, can_stitch: Callable, make_stitch: Callable,
                 final_norm: str = "keep") -> None:
        self.anchors = [a for a in anchors if a.name in partition.cuts]
        self.by_name = {a.name: a for a in self.anchors}
        self.partition = partition
        self.stages = partition.stages
        self.can_stitch, self.make_stitch, self.final_norm = can_stitch, make_stitch, final_norm
        self.stitches: dict[str, Any] = {}
        self.points: dict[str, tuple[str, int, str, int]] = {}
        self._links: dict[tuple[int, int, int], str | None] = {}
        self._params: dict[int, list[tuple[int, int]]] = {}
        self._stitch_flops: dict[str, int] = {}
        p = next(self.anchors[0].parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")

    def link(self, i: int, k: int, j: int) -> str | None:
        """Key of the stitch from anchor ``i`` into anchor ``j`` at boundary ``k`` (``None``: cannot stitch)."""
        if (i, k, j) not in self._links:
            a, b = self.anchors[i].name, self.anchors[j].name
            p, q = self.partition.cuts[a][k], self.partition.cuts[b][k]
            key = None
            if self.can_stitch(a, p, b, q):
                layer = self.make_stitch(a, p, b, q)
                if layer is not None:
                    key = stitch_key(a, p, b, q)
                    self.stitches[key] = layer.to(self.device)
                    self.points[key] = (a, p, b, q)
            self._links[(i, k, j)] = key
        return self._links[(i, k, j)]

    def route(self, genotype: Genotype) -> Route | None:
        """The route of an assembly (``None`` when a boundary cannot be stitched)."""
        segments, start = [], 0
        for k in range(1, self.stages + 1):
            if k < self.stages and genotype[k] == genotype[start]:
                continue
            a = self.anchors[genotype[start]].name
            segments.append(Segment(a, self.partition.cuts[a][start], self.partition.cuts[a][k]))
            if k < self.stages and self.link(genotype[start], k, genotype[k]) is None:
                return None
            start = k
        return Route(segments, meta={"kind": "dery"})

    def names(self, genotype: Genotype) -> tuple[str, ...]:
        """Anchor names of a genotype."""
        return tuple(self.anchors[i].name for i in genotype)

    def _unique_params(self, modules: Sequence[torch.nn.Module]) -> int:
        seen: set[int] = set()
        total = 0
        for m in modules:
            if id(m) not in self._params:
                self._params[id(m)] = [(id(p), p.numel()) for p in m.parameters()]
            for pid, n in self._params[id(m)]:
                if pid not in seen:
                    seen.add(pid)
                    total += n
        return total

    def _flops_of_stitch(self, key: str, src: Anchor, pos: int) -> int:
        if key not in self._stitch_flops:
            layer = self.stitches[key]
            param = next(layer.parameters(), None)
            kw = {"device": param.device, "dtype": param.dtype} if param is not None else {}
            with torch.no_grad():
                _, self._stitch_flops[key] = count_flops(layer, src.graph.spec_at(pos).example(1, **kw))
        return self._stitch_flops[key]

    def cost(self, route: Route) -> tuple[int, int]:
        """``(flops, params)`` of a route, counted as :class:`stitchframe.SNNet` counts them."""
        first, last = self.by_name[route.segments[0].anchor], self.by_name[route.segments[-1].anchor]
        flops = first.graph.stem.flops + last.graph.head.flops
        modules: list[torch.nn.Module] = [first.stem]
        for seg in route.segments:
            a = self.by_name[seg.anchor]
            flops += a.graph.flops_between(seg.start, seg.end)
            modules += ([a.context] if a.context is not None else []) + list(a.blocks[seg.start : seg.end])
        for src, p, dst, q, _link in route.stitch_points():
            key = stitch_key(src, p, dst, q)
            flops += self._flops_of_stitch(key, self.by_name[src], p)
            modules.append(self.stitches[key])
        if (self.final_norm == "keep" or route.is_anchor) and last.norm is not None:
            modules.append(last.norm)
        modules.append(last.head)
        return flops, self._unique_params(modules)


class Scorer:
    """Scores routes with the proxies, fitting their stitching layers on the probe first.

    Args:
        reassembler: Owner of the stitching layers.
        probe: Probe batches (model inputs) for least squares.
        inputs: The batch the proxies score on, and its size.
        proxies: Proxy names.
        stitch_init: ``lstsq`` (fit on the probe) or ``random``.
    """

    def __init__(self, reassembler: Reassembler, probe: Sequence[Any], inputs: tuple[Any, int],
                 proxies: Sequence[str], stitch_init: str) -> None:
        self.r, self.probe, self.proxies, self.stitch_init = reassembler, probe, tuple(proxies), stitch_init
        self.inputs = move_to(inputs[0], reassembler.device)
        self.batch = inputs[1]
        self.cache: dict[Route, dict[str, float]] = {}
        self._fitted: set[str] = set()

    def _fit(self, keys: set[str]) -> None:
        todo = sorted(keys - self._fitted)
        if self.stitch_init != "lstsq" or not todo:
            return
        routes = []
        for key in todo:
            a, p, b, q = self.r.points[key]
            routes.append(Route.chain((a, 0, p), (b, q, self.r.by_name[b].depth)))
        net = SNNet(self.r.anchors, routes, {k: self.r.stitches[k] for k in todo})
        calibrate(net, self.probe)
        self._fitted.update(todo)

    def score(self, routes: Sequence[Route]) -> list[dict[str, float]]:
        """Proxy scores of ``routes`` (cached: a route is scored once)."""
        new = [r for r in dict.fromkeys(routes) if r not in self.cache]
        if new:
            keys = {stitch_key(s, p, d, q) for r in new for s, p, d, q, _ in r.stitch_points()}
            self._fit(keys)
            net = SNNet(self.r.anchors, new, {k: self.r.stitches[k] for k in keys}, final_norm=self.r.final_norm)
            modes = [(m, m.training) for m in net.modules()]
            net.eval()
            try:
                for i, route in enumerate(new):
                    self.cache[route] = score_route(net, i, self.inputs, self.batch, self.proxies)
            finally:
                for m, mode in modes:
                    m.training = mode
        return [self.cache[r] for r in routes]


def _candidates(r: Reassembler, genotypes, mixed_only: bool) -> dict[Genotype, tuple[Route, tuple[int, int]]]:
    out = {}
    for g in genotypes:
        if mixed_only and len(set(g)) < 2:
            continue
        route = r.route(g)
        if route is not None:
            out[g] = (route, r.cost(route))
    return out


def _ranked(scorer: Scorer, pool: dict) -> list[tuple[Genotype, dict[str, float], float]]:
    """``(genotype, scores, mean rank)`` of every assembly in ``pool``, best first (ties: by genotype)."""
    gens = sorted(pool)
    scores = scorer.score([pool[g][0] for g in gens])
    ranks = mean_ranks(scores, scorer.proxies)
    order = sorted(range(len(gens)), key=lambda i: (ranks[i], gens[i]))
    return [(gens[i], scores[i], ranks[i]) for i in order]


def _best(r: Reassembler, scorer: Scorer, pool: dict, budget: int, top: int) -> list[Assembly]:
    return [
        Assembly(r.names(g), pool[g][0], *pool[g][1], scores, rank, budget)
        for g, scores, rank in _ranked(scorer, pool)[:top]
    ]


def _enumerate(r: Reassembler, scorer: Scorer, budgets: list[Budget], o: DeryOptions) -> list[list[Assembly]]:
    everything = _candidates(r, itertools.product(range(len(r.anchors)), repeat=r.stages), o.mixed_only)
    out = []
    for b, budget in enumerate(budgets):
        pool = {g: v for g, v in everything.items() if _fits(v[1], budget)}
        _warn_if_empty(pool, everything, b, budget)
        out.append(_best(r, scorer, pool, b, o.top))
    return out


def _evolve(r: Reassembler, scorer: Scorer, budget: Budget, b: int, o: DeryOptions, seed: int) -> list[Assembly]:
    rng = random.Random(seed * 7919 + b)
    n, k = len(r.anchors), r.stages
    seen: dict[Genotype, tuple[Route, tuple[int, int]] | None] = {}

    def admit(g: Genotype, into: dict) -> None:
        """Add ``g`` to ``into`` when it is new, stitchable and within the budget."""
        if g not in seen:
            seen[g] = _candidates(r, [g], o.mixed_only).get(g)
            if seen[g] is not None and _fits(seen[g][1], budget):
                into[g] = seen[g]

    pool: dict = {}
    for _ in range(o.population * 50):
        admit(tuple(rng.randrange(n) for _ in range(k)), pool)
        if len(pool) >= o.population:
            break
    _warn_if_empty(pool, {g: v for g, v in seen.items() if v is not None}, b, budget)
    for _ in range(o.generations):
        if not pool:
            break
        parents = [g for g, _, _ in _ranked(scorer, pool)[: max(2, o.population // 2)]]
        children: dict = {}
        for _ in range(o.population * 50):
            p1, p2 = rng.choice(parents), rng.choice(parents)
            child = [p1[i] if rng.random() < 0.5 else p2[i] for i in range(k)]
            child[rng.randrange(k)] = rng.randrange(n)
            admit(tuple(child), children)
            if len(children) >= o.population:
                break
        if not children:
            break
        pool.update(children)
    return _best(r, scorer, pool, b, o.top)


def _warn_if_empty(pool: dict, feasible: dict, b: int, budget: Budget) -> None:
    if pool:
        return
    if feasible:
        flops, params = min(v[1] for v in feasible.values())
        hint = f"the cheapest assembly found has {flops:.4g} FLOPs and {params} parameters"
    else:
        hint = "no two anchors could be stitched at the stage boundaries"
    warnings.warn(f"dery: no assembly fits budget {b} ({attrs.asdict(budget)}); {hint}", stacklevel=4)


def search_assemblies(r: Reassembler, scorer: Scorer, options: DeryOptions, seed: int) -> list[list[Assembly]]:
    """The best ``top`` assemblies of every budget (see the module docstring)."""
    budgets = effective_budgets(options)
    if len(r.anchors) < 2 and options.mixed_only:
        warnings.warn(
            f"dery: only {[a.name for a in r.anchors]} has at least stages={r.stages} blocks, so no assembly mixes "
            "two anchors; lower stitch.space_options.stages", stacklevel=3,
        )
        return [[] for _ in budgets]
    size = len(r.anchors) ** r.stages
    mode = options.search
    if mode == "auto":
        mode = "enumerate" if size <= options.max_enumerate else "evolution"
    if mode == "enumerate":
        return _enumerate(r, scorer, budgets, options)
    return [_evolve(r, scorer, budget, b, options, seed) for b, budget in enumerate(budgets)]


def finite(value: float) -> float | None:
    """``value`` for JSON metadata (``None`` when not finite)."""
    return value if math.isfinite(value) else None
