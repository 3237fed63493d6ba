"""1. Route forward overhead: ``SNNet`` with a route selected vs the same route written by hand.

For every measured route three variants run the same modules on the same
batch, interleaved in random order every round:

* ``snnet``  - ``snnet.select(route); snnet(x)``;
* ``hand``   - the route written out by hand with the anchors' own stem,
  blocks, stitching layer, final norm and head (no framework code);
* ``export`` - ``snnet.export(route)(x)``, the standalone route module.

Goals: ``snnet / hand <= 1.02``, ``export / hand <= 1.00`` (within noise),
and all three outputs bit-identical.  A second, small-input configuration
(batch 1 at a low resolution) makes the per-call dispatch cost visible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from . import families
from .harness import Context, Goal, fmt_ratio, interleave, md_table, num_threads, ratios, summarize

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


def by_hand(net: Any, route_id: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The route written out by hand: stem, blocks, stitch, blocks, final norm, head.

    Handles context-free anchors with one or two segments (DeiT, the tiny test ViTs).
    """
    route = net.routes[route_id]
    segs = route.segments
    first = net.anchors[segs[0].anchor]
    front = list(first.blocks[segs[0].start : segs[0].end])
    if route.is_anchor:
        norm = first.norm if first.norm is not None else torch.nn.Identity()

        def anchor_route(x: torch.Tensor) -> torch.Tensor:
            x = first.stem(x)
            for blk in front:
                x = blk(x)
            return first.head(norm(x))

        return anchor_route
    if len(segs) != 2 or first.uses_context:
        raise ValueError(f"by_hand supports context-free routes of one or two segments, not {route}")
    last = net.anchors[segs[1].anchor]
    stitch = net.stitch_for(route, 0)
    back = list(last.blocks[segs[1].start : segs[1].end])
    norm = last.norm if (last.norm is not None and net.final_norm == "keep") else torch.nn.Identity()

    def stitched_route(x: torch.Tensor) -> torch.Tensor:
        x = first.stem(x)
        for blk in front:
            x = blk(x)
        x = stitch(x)
        for blk in back:
            x = blk(x)
        return last.head(norm(x))

    return stitched_route


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
                                              net.routes[i].segments[1].start)))
    return ids


def _time_config(cfg: Config, params: Params, ctx: Context) -> dict[str, Any]:
    net = families.build(cfg.anchors, ctx.regs(), device=ctx.device, seed=ctx.seed)
    x = families.images(net, cfg.batch, seed=ctx.seed, device=ctx.device)
    rows = []
    with torch.no_grad():
        for rid in pick_routes(net, params.stitched_pairs):
            hand = by_hand(net, rid)
            exported = net.export(rid).eval()

            def run_snnet(rid=rid):
                net.select(rid)
                return net(x)

            outs = {"snnet": run_snnet(), "hand": hand(x), "export": exported(x)}
            identical = all(torch.equal(outs["hand"], o) for o in outs.values())
            ctx.log(f"  [{NAME}] {cfg.label}: route {rid} {net.routes[rid]}")
            times = interleave({"snnet": run_snnet, "hand": lambda: hand(x), "export": lambda: exported(x)},
                               rounds=cfg.rounds, warmup=1, device=ctx.device, seed=ctx.seed + rid, inner=cfg.inner)
            diffs = [(a - b) * 1e6 for a, b in zip(times["snnet"], times["hand"])]
            rows.append({
                "route_id": rid,
                "route": str(net.routes[rid]),
                "bit_identical": identical,
                "snnet_over_hand": ratios(times, "snnet", "hand"),
                "export_over_hand": ratios(times, "export", "hand"),
                "snnet_minus_hand_us": summarize(diffs),
                "seconds": {k: summarize(v) for k, v in times.items()} if ctx.cuda else None,
            })
    return {"label": cfg.label, "batch": cfg.batch, "rounds": cfg.rounds, "inner": cfg.inner,
            "anchors": [dict(a) for a in cfg.anchors], "routes": rows}


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    with num_threads(params.threads if not ctx.cuda else None):
        configs = [_time_config(c, params, ctx) for c in params.configs]
    main = configs[0]["routes"]
    worst_snnet = max(r["snnet_over_hand"]["median"] for r in main)
    worst_export = max(r["export_over_hand"]["median"] for r in main)
    spread = max(r["export_over_hand"]["q75"] - r["export_over_hand"]["q25"] for r in main)
    identical = all(r["bit_identical"] for c in configs for r in c["routes"])
    goals = [
        Goal(name="SN-Net route / by hand", target="<= 1.02x", measured=f"worst median {worst_snnet:.3f}x",
             met=worst_snnet <= 1.02, note=configs[0]["label"]),
        Goal(name="exported route / by hand", target="<= 1.00x (within noise)",
             measured=f"worst median {worst_export:.3f}x (quartile spread up to {spread:.3f})",
             met=worst_export <= 1.0 + max(0.005, spread / 2), note=configs[0]["label"]),
        Goal(name="outputs bit-identical", target="snnet == export == by hand",
             measured="yes" if identical else "no", met=identical),
    ]
    return {"threads": params.threads, "configs": configs, "goals": [g.to_dict() for g in goals]}


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    parts = []
    for c in result["configs"]:
        rows = [
            [r["route"], fmt_ratio(r["snnet_over_hand"]), fmt_ratio(r["export_over_hand"]),
             f"{r['snnet_minus_hand_us']['median']:+.0f}", "yes" if r["bit_identical"] else "**no**"]
            for r in c["routes"]
        ]
        parts.append(f"**{c['label']}** ({c['rounds']} interleaved rounds, {c['inner']} call(s) each, "
                     f"{result['threads'] or 'default'} thread(s)); median [quartiles] of per-round ratios\n\n"
                     + md_table(["route", "SN-Net / by hand", "export / by hand", "SN-Net - by hand (µs)",
                                 "bit-identical"], rows))
    return "\n\n".join(parts)
