"""Memory format: channels_last vs contiguous weights, for a CNN SN-Net and for a ViT one.

A spec's ``memory_format: auto`` (:func:`stitchframe.pipeline.resolve_memory_format`)
puts an SN-Net of CNN anchors in channels_last (NHWC) and leaves one of ViT
anchors contiguous (NCHW).  This benchmark checks both choices: for each
family two copies of the same SN-Net, one in each layout, with their own
``AdamW`` (:func:`stitchframe.optim.build_optimizer`), are timed on the same
batch, interleaved in random order, per sampled route (``uniform``):

* ``train`` - ``select(route)``, forward, cross-entropy, backward, optimizer
  step, ``zero_grad`` (a training step of ``stitchframe build``);
* ``forward`` - the route's forward without gradients (evaluation).

It runs with all of torch's threads (``threads: None``), as a build does.
"""

from __future__ import annotations

import copy
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from stitchframe.optim import build_optimizer
from stitchframe.pipeline import resolve_memory_format
from stitchframe.sampling import make_sampler
from stitchframe.spec import TrainSpec

from . import families
from .harness import Context, Goal, describe_anchors, fmt_ratio, interleave, md_table, num_threads, ratios

NAME = "layout"
TITLE = "Memory format: channels_last vs contiguous"
#: Auto's layout may be this much slower than the other before the goal counts as missed (timing noise).
TIE = 1.02
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


@attrs.frozen(kw_only=True)
class Family:
    """One anchor family and its batch."""

    label: str
    anchors: tuple
    batch: int = 64


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the layout benchmark."""

    families: tuple[Family, ...]
    routes: int = 8  # sampled routes (uniform) per family
    rounds: int = 2  # timed rounds of each step per sampled route
    threads: int | None = None


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    fams = (Family(label="EfficientNet-Lite0/1/2, 64 px", anchors=tuple(families.efficientnet_lite(64, 10))),
            Family(label="DeiT-Ti/S, 64 px", anchors=tuple(families.deit(64, ("tiny", "small"))), batch=32))
    return {"quick": Params(families=fams, routes=3, rounds=1), "full": Params(families=fams)}


def _family(fam: Family, params: Params, ctx: Context) -> dict[str, Any]:
    base = families.build(fam.anchors, ctx.regs(), device=ctx.device, seed=ctx.seed).train()
    nets = {name: copy.deepcopy(base).to(memory_format=fmt) for name, fmt in LAYOUTS.items()}
    del base
    opts = {name: build_optimizer(net, TrainSpec(lr=1e-6)) for name, net in nets.items()}
    x = families.images(nets["contiguous"], fam.batch, seed=ctx.seed, device=ctx.device)
    net0 = nets["contiguous"]
    classes = net0.forward_route(x[:1], 0).shape[-1]
    y = torch.randint(0, classes, (fam.batch,), generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.device)
    sampler = make_sampler("uniform", list(net0.routes), seed=ctx.seed)

    def train_step(name: str, rid: int):
        def step() -> None:
            net, opt = nets[name], opts[name]
            net.select(rid)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def forward(name: str, rid: int):
        def run() -> None:
            with torch.no_grad():
                nets[name].forward_route(x, rid)
        return run

    times: dict[str, list[float]] = {f"{kind} {name}": [] for kind in ("train", "forward") for name in LAYOUTS}
    route_ids = []
    for i in range(params.routes):
        rid = sampler.route_at(i)
        route_ids.append(rid)
        ctx.log(f"  [{NAME}] {fam.label}: route {rid} {net0.routes[rid]}")
        steps = {f"train {n}": train_step(n, rid) for n in LAYOUTS} | {f"forward {n}": forward(n, rid) for n in LAYOUTS}
        t = interleave(steps, rounds=params.rounds, warmup=1, device=ctx.device, seed=ctx.seed + i)
        for k in times:
            times[k] += t[k]
    auto = "channels_last" if resolve_memory_format("auto", net0) == torch.channels_last else "contiguous"
    return {
        "label": fam.label, "anchors": list(fam.anchors), "batch": fam.batch, "routes": route_ids, "auto": auto,
        "train_channels_last_over_contiguous": ratios(times, "train channels_last", "train contiguous"),
        "forward_channels_last_over_contiguous": ratios(times, "forward channels_last", "forward contiguous"),
        "seconds": {k: sorted(v)[len(v) // 2] for k, v in times.items()},
    }


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    with num_threads(params.threads if not ctx.cuda else None):
        rows = [_family(f, params, ctx) for f in params.families]
    goals = []
    for r in rows:
        tr, fw = r["train_channels_last_over_contiguous"]["median"], r["forward_channels_last_over_contiguous"]["median"]
        picked = tr if r["auto"] == "channels_last" else 1 / tr  # auto's layout over the other one
        goals.append(Goal(name=f"{r['label']}: memory_format auto trains no slower than the other layout",
                          target=f"training step with auto's layout / the other's <= {TIE:.2f}x (a tie within noise)",
                          measured=f"auto: {r['auto']}, {picked:.3f}x (channels_last / contiguous: training step "
                                   f"{tr:.3f}x, forward {fw:.3f}x)", met=picked <= TIE))
    return {"families": rows, "goals": [g.to_dict() for g in goals]}


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    p = result["params"]
    rows = []
    for r in result["families"]:
        s = r["seconds"]
        rows.append([r["label"], r["batch"], len(r["routes"]), r["auto"],
                     fmt_ratio(r["train_channels_last_over_contiguous"]),
                     f"{s['train channels_last']:.3f} / {s['train contiguous']:.3f}",
                     fmt_ratio(r["forward_channels_last_over_contiguous"]),
                     f"{s['forward channels_last']:.3f} / {s['forward contiguous']:.3f}"])
    anchors = "; ".join(f"{r['label']}: {describe_anchors(r['anchors'])}" for r in result["families"])
    return (f"{p['rounds']} timed rounds per sampled route, the two layouts interleaved in random order; torch's "
            f"threads: {p['threads'] or 'all'}. Anchors: {anchors}.\n\n"
            + md_table(["family", "batch", "sampled routes", "auto picks", "training step channels_last / contiguous",
                        "median s (channels_last / contiguous)", "forward channels_last / contiguous",
                        "median s (channels_last / contiguous)"], rows))
