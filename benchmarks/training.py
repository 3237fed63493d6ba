"""5. Training step: SN-Net steps (uniform route sampling) vs plain training steps of the same routes.

Routes come from :func:`stitchframe.sampling.make_sampler` (``uniform``, as
:func:`stitchframe.train` samples them).  For every sampled route two steps
are timed, in random order, on the same batch:

* ``snnet`` - ``snnet.select(route)``, forward, cross-entropy, backward,
  ``AdamW.step`` over the whole SN-Net (built by
  :func:`stitchframe.optim.build_optimizer`, as ``train`` does; parameters
  of other routes have no gradient and are skipped), ``zero_grad``;
* ``plain`` - the same on a standalone copy of the route
  (``snnet.export(route)``) with its own ``AdamW`` over its own parameters:
  what training that network alone costs.

The plain copy and its optimizer are made (and warmed up with one untimed
step) per sampled route and dropped afterwards, so memory stays bounded.
Variants: ``fp32`` always; on CUDA also ``bf16`` (autocast) and
``compile`` (every block, stem, head and stitching layer compiled with
``torch.compile`` in both the SN-Net and the plain copy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from stitchframe.optim import build_optimizer
from stitchframe.sampling import make_sampler
from stitchframe.spec import TrainSpec

from . import families
from .harness import Context, Goal, fmt_ratio, interleave, md_table, num_threads, ratios, summarize

NAME = "training"
TITLE = "Training step: SN-Net vs plain"

CUDA_ONLY = ("bf16", "compile")


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the training benchmark."""

    anchors: tuple
    batch: int = 32
    routes: int = 12  # sampled routes (uniform)
    steps_per_route: int = 2  # timed steps of each variant per sampled route
    variants: tuple[str, ...] = ("fp32", "bf16", "compile")
    cpu_variants: tuple[str, ...] = ("fp32",)  # bf16 autocast runs on CPU too, but is not the target
    threads: int | None = 1


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    anchors = tuple(families.deit(32, ("tiny", "small")))
    return {
        "quick": Params(anchors=anchors, routes=6),
        "full": Params(anchors=anchors, routes=24, steps_per_route=3),
    }


def _parts(module: nn.Module) -> list[nn.Module]:
    """The route-level parts (stems, blocks, norms, heads, stitching layers) of an SN-Net or an exported route."""
    from stitchframe import SNNet

    if isinstance(module, SNNet):
        parts = [p for a in module.anchors.values() for p in (a.stem, a.norm, a.head, *a.blocks)]
        parts += list(module.stitches.values())
    else:
        parts = [p for s in module.segments for p in (s.stem, s.norm, s.head, s.stitch, *s.blocks)]
    return [p for p in parts if p is not None]


def _compile_parts(module: nn.Module) -> None:
    """Compile every part in place; per-part compilation is unaffected by route switching.

    An exported copy of compiled parts carries their compiled call, which
    still points at the originals: it is dropped and compiled afresh.
    """
    for part in _parts(module):
        part._compiled_call_impl = None
        part.compile()


def _step_fn(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             amp: torch.dtype | None, device: torch.device, before: Callable[[], None] | None = None):
    def step() -> None:
        if before is not None:
            before()
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _run_variant(variant: str, params: Params, ctx: Context) -> dict[str, Any]:
    net = families.build(params.anchors, ctx.regs(), device=ctx.device, seed=ctx.seed).train()
    if variant == "compile":
        _compile_parts(net)
    amp = torch.bfloat16 if variant == "bf16" else None
    cfg = TrainSpec(lr=1e-5)
    opt = build_optimizer(net, cfg)
    sampler = make_sampler("uniform", list(net.routes), seed=ctx.seed)
    x = families.images(net, params.batch, seed=ctx.seed, device=ctx.device)
    classes = net.forward_route(x[:1], 0).shape[-1]
    y = torch.randint(0, classes, (params.batch,), generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.device)
    times: dict[str, list[float]] = {"snnet": [], "plain": []}
    route_ids = []
    for i in range(params.routes):
        rid = sampler.route_at(i)
        route_ids.append(rid)
        plain = net.export(rid).train()
        if variant == "compile":
            _compile_parts(plain)
        plain_opt = torch.optim.AdamW(plain.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = {
            "snnet": _step_fn(net, opt, x, y, amp, ctx.device, before=lambda rid=rid: net.select(rid)),
            "plain": _step_fn(plain, plain_opt, x, y, amp, ctx.device),
        }
        ctx.log(f"  [{NAME}] {variant}: route {rid} {net.routes[rid]}")
        t = interleave(steps, rounds=params.steps_per_route, warmup=1, device=ctx.device, seed=ctx.seed + i)
        for k in times:
            times[k] += t[k]
        del plain, plain_opt, steps
    out = {
        "variant": variant,
        "routes": route_ids,
        "snnet_over_plain_time": ratios(times, "snnet", "plain"),
    }
    if ctx.cuda:
        out["images_per_s"] = {k: params.batch / summarize(v)["median"] for k, v in times.items()}
    return out


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    allowed = params.variants if ctx.cuda else params.cpu_variants
    variants, skipped = [], []
    for v in params.variants:
        (variants if v in allowed else skipped).append(v)
    with num_threads(params.threads if not ctx.cuda else None):
        rows = [_run_variant(v, params, ctx) for v in variants]
    goals = [
        Goal(name=f"SN-Net step / plain step ({r['variant']})", target="<= 1.05x",
             measured=fmt_ratio(r["snnet_over_plain_time"]), met=r["snnet_over_plain_time"]["median"] <= 1.05)
        for r in rows
    ]
    goals += [Goal(name=f"{v} variant", target="measured on CUDA", measured="skipped", met=None,
                   note="needs a CUDA device") for v in skipped if v in CUDA_ONLY]
    return {"batch": params.batch, "variants": rows, "skipped": skipped, "goals": [g.to_dict() for g in goals]}


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    p = result["params"]
    rows = []
    for r in result["variants"]:
        s = r["snnet_over_plain_time"]
        ips = r.get("images_per_s")
        rows.append([r["variant"], len(r["routes"]), fmt_ratio(s), f"{1 / s['median']:.3f}x",
                     f"{ips['snnet']:.0f} / {ips['plain']:.0f}" if ips else "-"])
    skipped = f"\n\nSkipped here (CUDA only): {', '.join(result['skipped'])}." if result["skipped"] else ""
    return (f"Batch {result['batch']}, {p['steps_per_route']} timed steps of each variant per sampled route "
            f"(median [quartiles] of per-step ratios).\n\n"
            + md_table(["variant", "sampled routes", "time SN-Net / plain", "images/s SN-Net / plain",
                        "images/s (CUDA only)"], rows) + skipped)
