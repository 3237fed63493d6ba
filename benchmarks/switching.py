"""2. Switching routes: the cost of ``SNNet.select``.

* Time per ``select`` call by route id, by printed name and by ``Route``
  (CPU-side Python, so reported in microseconds on every device), also as a
  fraction of one forward of the cheapest route.
* Allocations: Python-heap allocations of many ``select`` calls
  (``tracemalloc``), and ``nn.Module`` constructions during them (none means
  no graph is rebuilt); the precomputed plans must be the same objects after.
* A forward right after a switch vs the same routes with no switching at all
  (their exported copies), interleaved: the ratio shows no hidden rebuild or
  warm-up on the first call after a switch.
"""

from __future__ import annotations

import timeit
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import nn

from . import families
from .harness import Context, Goal, fmt_ratio, interleave, md_table, num_threads, python_allocations, ratios

NAME = "switching"
TITLE = "Switching routes"


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the switching benchmark."""

    anchors: tuple
    batch: int = 1
    calls: int = 100_000
    repeats: int = 7
    alloc_calls: int = 10_000
    rounds: int = 20
    threads: int | None = 1


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    anchors = tuple(families.deit(224))
    return {
        "quick": Params(anchors=anchors, calls=20_000, repeats=5, rounds=10),
        "full": Params(anchors=anchors),
    }


@contextmanager
def count_module_inits() -> Iterator[list[int]]:
    """Count ``nn.Module.__init__`` calls (every module construction) inside the block."""
    counter = [0]
    original = nn.Module.__init__

    def counting(self, *args, **kwargs):
        counter[0] += 1
        original(self, *args, **kwargs)

    nn.Module.__init__ = counting
    try:
        yield counter
    finally:
        nn.Module.__init__ = original


def _select_costs(net: Any, params: Params, a: int, b: int) -> dict[str, Any]:
    by = {"id": (a, b), "name": (str(net.routes[a]), str(net.routes[b])), "Route": (net.routes[a], net.routes[b])}
    out = {}
    for kind, (ra, rb) in by.items():
        def flip(ra=ra, rb=rb):
            net.select(ra)
            net.select(rb)

        per_call = min(timeit.repeat(flip, number=params.calls // 2, repeat=params.repeats)) / params.calls
        with count_module_inits() as inits:
            few = python_allocations(flip, params.alloc_calls // 20)
            many = python_allocations(flip, params.alloc_calls // 2)
        allocs = {
            "calls": params.alloc_calls,
            "net_bytes": many["net_bytes"],
            "peak_bytes": many["peak_bytes"],
            # growth between 1/10 and all of the calls: what each call leaves behind
            "bytes_per_call": (many["net_bytes"] - few["net_bytes"]) / (params.alloc_calls * 0.45),
        }
        out[kind] = {"us_per_call": per_call * 1e6, "allocations": allocs, "module_inits": inits[0]}
    return out


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    net = families.build(params.anchors, ctx.regs(), device=ctx.device, seed=ctx.seed)
    anchors = [i for i, r in enumerate(net.routes) if r.is_anchor]
    stitched = next(i for i, r in enumerate(net.routes) if not r.is_anchor)
    a, b = anchors[0], stitched
    plans_before = [id(net.plan(i)) for i in range(len(net.routes))]
    costs = _select_costs(net, params, a, b)
    same_plans = plans_before == [id(net.plan(i)) for i in range(len(net.routes))]
    x = families.images(net, params.batch, seed=ctx.seed, device=ctx.device)
    ex_a, ex_b = net.export(a).eval(), net.export(b).eval()

    def switching():
        net.select(a)
        net(x)
        net.select(b)
        net(x)

    def fixed():
        ex_a(x)
        ex_b(x)

    with torch.no_grad(), num_threads(params.threads if not ctx.cuda else None):
        times = interleave({"switching": switching, "fixed": fixed}, rounds=params.rounds, warmup=2,
                           device=ctx.device, seed=ctx.seed)
    forward_s = min(times["fixed"]) / 2
    after_switch = ratios(times, "switching", "fixed")
    us = costs["id"]["us_per_call"]
    allocs = costs["id"]["allocations"]
    goals = [
        Goal(name="select(id) time", target="microseconds", measured=f"{us:.3f} µs per call", met=us < 10.0),
        Goal(name="select(id) allocates nothing", target="0 bytes per call (tracemalloc)",
             measured=f"{allocs['bytes_per_call']:.3g} B per call; {allocs['net_bytes']} B held, "
                      f"{allocs['peak_bytes']} B peak after {allocs['calls']} calls",
             met=allocs["bytes_per_call"] == 0 and allocs["peak_bytes"] <= 256,
             note="a constant <= 256 B, the same after 100 or 100,000 calls, is CPython's own bookkeeping"),
        Goal(name="no graph rebuild", target="0 modules built, plans unchanged",
             measured=f"{costs['id']['module_inits']} modules built, plans {'unchanged' if same_plans else 'rebuilt'}",
             met=costs["id"]["module_inits"] == 0 and same_plans),
        Goal(name="forward after a switch / no switching", target="~1.00x",
             measured=fmt_ratio(after_switch), met=after_switch["median"] <= 1.02),
    ]
    return {
        "routes": [str(net.routes[a]), str(net.routes[b])],
        "num_routes": len(net.routes),
        "select": costs,
        "plans_unchanged": same_plans,
        "forward_after_switch_over_fixed": after_switch,
        "select_over_forward": us * 1e-6 / forward_s,
        "goals": [g.to_dict() for g in goals],
    }


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    rows = []
    for kind, c in result["select"].items():
        al = c["allocations"]
        rows.append([f"`select({kind})`", f"{c['us_per_call']:.3f}", f"{al['bytes_per_call']:.3g}",
                     f"{al['net_bytes']} / {al['peak_bytes']}", c["module_inits"]])
    table = md_table(["call", "µs per call", "bytes per call", "bytes held / peak after all calls",
                      "modules built"], rows)
    return (f"SN-Net with {result['num_routes']} routes, switching between `{result['routes'][0]}` and "
            f"`{result['routes'][1]}`. One `select(id)` costs {result['select_over_forward']:.1e} of one "
            f"forward of the cheaper route at the benchmark's batch size.\n\n{table}\n\n"
            f"Forward right after a switch vs the same two routes as exported modules (no switching): "
            f"{fmt_ratio(result['forward_after_switch_over_fixed'])} (median [quartiles] of per-round ratios).")
