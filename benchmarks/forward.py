"""1. Route forward overhead: ``SNNet`` with a route selected vs the same route written by hand.

For every measured route four variants run on the same batch, interleaved
in a fresh random order every round:

* ``snnet``  - ``snnet.select(route); snnet(x)``;
* ``hand``   - the route written out by hand as a plain function calling the
  SN-Net's own stem, blocks, stitching layer, final norm and head;
* ``export`` - ``snnet.export(route)(x)``, the standalone route module;
* ``hand_export`` - the same plain function over the exported module's
  copied weights (``export`` is compared with this one: weights shared with
  ``snnet``/``hand`` would be warm in cache while the copies are cold).

Goals: ``snnet / hand <= 1.02``, ``export / hand_export <= 1.00`` and all
outputs bit-identical.  Timings of real models on a shared machine are noisy
(a few percent per round), so the framework's own cost is also measured
directly: the same calls on anchors whose modules do nothing (``dispatch``),
which leaves only the Python each variant runs per forward.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import torch
from torch import nn

from stitchframe import Anchor, build_snnet

from . import families
from .harness import Context, Goal, fmt_ratio, interleave, md_table, median_ci, num_threads, ratios, summarize

NAME = "forward"
TITLE = "Route forward overhead"


@attrs.frozen(kw_only=True)
class Config:
    """One model configuration to time."""

    label: str
    anchors: tuple
    batch: int
    rounds: int
    inner: int = 1


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the forward benchmark."""

    configs: tuple[Config, ...]
    threads: int | None = 1
    stitched_pairs: int = 2  # mid-depth stitched routes of the first N anchor pairs
    dispatch_calls: int = 2000  # no-op forwards per timing ...
    dispatch_repeats: int = 15  # ... and timings (the best counts)


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    big = families.deit(224)
    small = families.deit(32)
    return {
        "quick": Params(configs=(
            Config(label="DeiT-Ti/S/B 224px, batch 8", anchors=tuple(big), batch=8, rounds=5),
            Config(label="DeiT-Ti/S/B 32px, batch 1", anchors=tuple(small), batch=1, rounds=30, inner=5),
        )),
        "full": Params(configs=(
            Config(label="DeiT-Ti/S/B 224px, batch 8", anchors=tuple(big), batch=8, rounds=15),
            Config(label="DeiT-Ti/S/B 32px, batch 1", anchors=tuple(small), batch=1, rounds=100, inner=10),
        )),
    }


def _written_out(stem, front, stitch, back, norm, head) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain function calling the given modules in route order (no framework code)."""
    norm = norm if norm is not None else nn.Identity()
    front, back = list(front), list(back)
    if stitch is None:

        def anchor_route(x: torch.Tensor) -> torch.Tensor:
            x = stem(x)
            for blk in front:
                x = blk(x)
            return head(norm(x))

        return anchor_route

    def stitched_route(x: torch.Tensor) -> torch.Tensor:
        x = stem(x)
        for blk in front:
            x = blk(x)
        x = stitch(x)
        for blk in back:
            x = blk(x)
        return head(norm(x))

    return stitched_route


def by_hand(net: Any, route_id: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The route written out by hand with the SN-Net's own modules: stem, blocks, stitch, blocks, norm, head.

    Handles context-free anchors with one or two segments (DeiT, the tiny test ViTs).
    """
    route = net.routes[route_id]
    segs = route.segments
    first = net.anchors[segs[0].anchor]
    if len(segs) > 2 or first.uses_context:
        raise ValueError(f"by_hand supports context-free routes of one or two segments, not {route}")
    front = first.blocks[segs[0].start : segs[0].end]
    if route.is_anchor:
        return _written_out(first.stem, front, None, [], first.norm, first.head)
    last = net.anchors[segs[1].anchor]
    norm = last.norm if net.final_norm == "keep" else None
    return _written_out(first.stem, front, net.stitch_for(route, 0), last.blocks[segs[1].start : segs[1].end],
                        norm, last.head)


def by_hand_export(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same, over an exported route's own (copied) modules."""
    segs = module.segments
    if len(segs) > 2 or segs[0].uses_context:
        raise ValueError(f"by_hand_export supports context-free routes of one or two segments, not {module.route}")
    if len(segs) == 1:
        return _written_out(segs[0].stem, segs[0].blocks, None, [], segs[0].norm, segs[0].head)
    return _written_out(segs[0].stem, segs[0].blocks, segs[0].stitch, segs[1].blocks, segs[1].norm, segs[1].head)


def pick_routes(net: Any, stitched_pairs: int) -> list[int]:
    """Every anchor route, plus the mid-depth stitched route of the first ``stitched_pairs`` anchor pairs."""
    ids = [i for i, r in enumerate(net.routes) if r.is_anchor]
    pairs: list[tuple[str, str]] = []
    for r in net.routes:
        if len(r.segments) == 2 and r.anchors not in pairs:
            pairs.append(r.anchors)
    for pair in pairs[:stitched_pairs]:
        cands = [i for i, r in enumerate(net.routes) if r.anchors == pair and len(r.segments) == 2]
        depth = net.anchors[pair[0]].depth
        ids.append(min(cands, key=lambda i: (abs(net.routes[i].segments[0].end - depth // 2),
                                              abs(net.routes[i].segments[1].start - net.routes[i].segments[0].end))))
    return ids


def _time_config(cfg: Config, params: Params, ctx: Context) -> dict[str, Any]:
    net = families.build(cfg.anchors, ctx.regs(), device=ctx.device, seed=ctx.seed)
    x = families.images(net, cfg.batch, seed=ctx.seed, device=ctx.device)
    rows = []
    with torch.no_grad():
        for rid in pick_routes(net, params.stitched_pairs):
            hand = by_hand(net, rid)
            exported = net.export(rid).eval()
            hand_export = by_hand_export(exported)

            def run_snnet(rid=rid):
                net.select(rid)
                return net(x)

            control = by_hand(net, rid)  # A/A control: the same computation again
            calls = {"snnet": run_snnet, "hand": partial(hand, x), "export": partial(exported, x),
                     "hand_export": partial(hand_export, x), "control": partial(control, x)}
            outs = {k: f() for k, f in calls.items()}
            identical = all(torch.equal(outs["hand"], o) for o in outs.values())
            ctx.log(f"  [{NAME}] {cfg.label}: route {rid} {net.routes[rid]}")
            times = interleave(calls, rounds=cfg.rounds, warmup=1, device=ctx.device, seed=ctx.seed + rid,
                               inner=cfg.inner)
            diffs = [(a - b) * 1e6 for a, b in zip(times["snnet"], times["hand"])]
            per_round = {"snnet": [a / b for a, b in zip(times["snnet"], times["hand"])],
                         "export": [a / b for a, b in zip(times["export"], times["hand_export"])],
                         "control": [a / b for a, b in zip(times["control"], times["hand"])]}
            rows.append({
                "route_id": rid,
                "route": str(net.routes[rid]),
                "bit_identical": identical,
                "snnet_over_hand": ratios(times, "snnet", "hand"),
                "export_over_hand": ratios(times, "export", "hand_export"),
                "control_over_hand": ratios(times, "control", "hand"),
                "snnet_minus_hand_us": summarize(diffs),
                "rounds_over_hand": per_round,
                "hand_seconds_median": summarize(times["hand"])["median"],
                "seconds": {k: summarize(v) for k, v in times.items()} if ctx.cuda else None,
            })
    return {"label": cfg.label, "batch": cfg.batch, "rounds": cfg.rounds, "inner": cfg.inner,
            "anchors": [dict(a) for a in cfg.anchors], "routes": rows}


def _null_anchor(name: str, width: int, depth: int) -> Anchor:
    """An anchor whose stem, blocks, norm and head do nothing: only the framework's dispatch is left to time."""
    return Anchor(name, stem=nn.Identity(), blocks=[nn.Identity() for _ in range(depth)], norm=nn.Identity(),
                  head=nn.Identity(), layout="tokens", prefix=1, example_inputs=torch.zeros(1, 5, width))


def dispatch(ctx: Context, *, depth: int = 12, number: int = 2000, repeats: int = 15) -> dict[str, Any]:
    """Per-call time (µs, best of ``repeats``) of a two-anchor stitched route and an anchor route made of no-op
    modules: SN-Net vs exported vs by hand.  The differences are what the framework adds to every forward."""
    net = build_snnet([_null_anchor("null_a", 8, depth), _null_anchor("null_b", 16, depth)], space="snnet",
                      registries=ctx.regs()).eval()
    x = torch.zeros(1, 5, 8)
    out = {}
    with torch.no_grad():
        for rid in (0, pick_routes(net, 1)[-1]):
            hand, exported = by_hand(net, rid), net.export(rid).eval()
            hand_export = by_hand_export(exported)

            def run_snnet(rid=rid):
                net.select(rid)
                return net(x)

            calls = {"snnet": run_snnet, "export": partial(exported, x), "hand": partial(hand, x),
                     "hand_export": partial(hand_export, x)}
            best = {k: min(timeit.repeat(f, number=number, repeat=repeats)) / number * 1e6 for k, f in calls.items()}
            out[str(net.routes[rid])] = {"us_per_call": best, "snnet_minus_hand_us": best["snnet"] - best["hand"],
                                         "export_minus_hand_us": best["export"] - best["hand_export"]}
    return out


def _pooled(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [v for r in rows for v in r["rounds_over_hand"][key]]
    lo, hi = median_ci(values)
    return {**summarize(values), "ci95": [lo, hi]}


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    with num_threads(params.threads if not ctx.cuda else None):
        disp = dispatch(ctx, number=params.dispatch_calls, repeats=params.dispatch_repeats)
        configs = [_time_config(c, params, ctx) for c in params.configs]
    main = configs[0]["routes"]
    pooled = {k: _pooled(main, k) for k in ("snnet", "export", "control")}
    stitched_disp = list(disp.values())[-1]
    fastest = min(r["hand_seconds_median"] for r in main)
    implied = {k: 1 + stitched_disp[f"{k}_minus_hand_us"] * 1e-6 / fastest for k in ("snnet", "export")}
    identical = all(r["bit_identical"] for c in configs for r in c["routes"])

    def measured(k: str) -> str:
        p, c = pooled[k], pooled["control"]
        return (f"framework dispatch {stitched_disp[f'{k}_minus_hand_us']:+.1f} µs/call = {implied[k]:.5f}x of the "
                f"fastest route; timed: pooled median {p['median']:.3f}x (95% CI {p['ci95'][0]:.3f}-"
                f"{p['ci95'][1]:.3f}, {p['n']} rounds; A/A control {c['median']:.3f}x)")

    note = f"{configs[0]['label']}; met/missed judged on the dispatch cost, the timed ratio shows the noise"
    goals = [
        Goal(name="SN-Net route / by hand", target="<= 1.02x", measured=measured("snnet"),
             met=implied["snnet"] <= 1.02, note=note),
        Goal(name="exported route / by hand", target="<= 1.00x (to 2 decimals)", measured=measured("export"),
             met=implied["export"] < 1.005, note=note),
        Goal(name="outputs bit-identical", target="snnet == export == by hand",
             measured="yes" if identical else "no", met=identical),
    ]
    return {"threads": params.threads, "dispatch": disp, "pooled": pooled, "implied": implied,
            "configs": configs, "goals": [g.to_dict() for g in goals]}


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    disp = md_table(["no-op route", "SN-Net µs", "export µs", "by hand µs", "SN-Net - by hand", "export - by hand"],
                    [[f"`{k}`", f"{v['us_per_call']['snnet']:.1f}", f"{v['us_per_call']['export']:.1f}",
                      f"{v['us_per_call']['hand']:.1f}", f"{v['snnet_minus_hand_us']:+.1f}",
                      f"{v['export_minus_hand_us']:+.1f}"] for k, v in result["dispatch"].items()])
    p = result["params"]
    parts = [f"Dispatch cost per forward, measured on anchors whose modules do nothing (best of "
             f"{p.get('dispatch_repeats', 15)} x {p.get('dispatch_calls', 2000)} calls; the only thing left is the framework's own "
             f"Python):\n\n" + disp]
    for c in result["configs"]:
        rows = [
            [r["route"], fmt_ratio(r["snnet_over_hand"]), fmt_ratio(r["export_over_hand"]),
             fmt_ratio(r["control_over_hand"]), "yes" if r["bit_identical"] else "**no**"]
            for r in c["routes"]
        ]
        parts.append(f"**{c['label']}** ({c['rounds']} interleaved rounds, {c['inner']} call(s) each, "
                     f"{result['threads'] or 'default'} thread(s)); median [quartiles] of per-round ratios\n\n"
                     + md_table(["route", "SN-Net / by hand", "export / by hand (its weights)",
                                 "A/A control: by hand / by hand", "bit-identical"], rows))
    return "\n\n".join(parts)
