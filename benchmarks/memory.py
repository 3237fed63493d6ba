"""6. Memory: an exported route vs the whole SN-Net.

For each measured route (every anchor route and a mid-depth stitched one):

* parameters and weight bytes, exact: the route's own (``snnet.export``)
  vs the whole SN-Net's;
* resident memory, measured: what building the SN-Net added vs what one
  exported copy adds (CPU: resident set; CUDA: allocated memory);
* inference peak above the resident weights, measured, for one forward of
  the route through the SN-Net and through the exported module (the same
  activations, so about equal), and the total footprint (weights + peak).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from . import families
from .forward import pick_routes
from .harness import Context, Goal, md_table, num_threads, peak_memory

NAME = "memory"
TITLE = "Memory: exported route vs whole SN-Net"


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the memory benchmark."""

    anchors: tuple
    batch: int = 8
    stitched_pairs: int = 2
    threads: int | None = 1


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    anchors = tuple(families.deit(224))
    return {"quick": Params(anchors=anchors, stitched_pairs=1), "full": Params(anchors=anchors)}


def _weights(module: torch.nn.Module) -> tuple[int, int]:
    """Unique parameters, and bytes of unique parameters and buffers."""
    params = {id(p): p for p in module.parameters()}
    tensors = {**params, **{id(b): b for b in module.buffers()}}
    return sum(p.numel() for p in params.values()), sum(t.numel() * t.element_size() for t in tensors.values())


def _route_row(net: Any, rid: int, x: torch.Tensor, ctx: Context) -> dict[str, Any]:
    with peak_memory(ctx.device) as m_export:
        exported = net.export(rid).eval()
    params, nbytes = _weights(exported)
    with torch.no_grad():
        with peak_memory(ctx.device) as f_net:
            net.forward_route(x, rid)
        with peak_memory(ctx.device) as f_exp:
            exported(x)
    del exported
    return {
        "route_id": rid,
        "route": str(net.routes[rid]),
        "params": params,
        "weight_bytes": nbytes,
        "export_resident_bytes": m_export["resident_after_bytes"],
        "forward_peak_bytes": {"snnet": f_net["peak_bytes"], "export": f_exp["peak_bytes"]},
    }


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    with num_threads(params.threads if not ctx.cuda else None):
        with peak_memory(ctx.device) as m_build:
            net = families.build(params.anchors, ctx.regs(), device=ctx.device, seed=ctx.seed)
        total_params, total_bytes = _weights(net)
        x = families.images(net, params.batch, seed=ctx.seed, device=ctx.device)
        rows = []
        for rid in pick_routes(net, params.stitched_pairs):
            ctx.log(f"  [{NAME}] route {rid} {net.routes[rid]}")
            rows.append(_route_row(net, rid, x, ctx))
    for r in rows:
        r["footprint_bytes"] = {
            "snnet": total_bytes + (r["forward_peak_bytes"]["snnet"] or 0),
            "export": r["weight_bytes"] + (r["forward_peak_bytes"]["export"] or 0),
        }
    smallest = min(rows, key=lambda r: r["params"])
    exact = all(r["params"] == net.routes[r["route_id"]].params for r in rows)
    goals = [
        Goal(name="exported route holds only its weights", target="params == route's params in the route table",
             measured="yes" if exact else "no", met=exact),
        Goal(name="smallest route's footprint / SN-Net's", target="< 1",
             measured=f"{smallest['footprint_bytes']['export'] / smallest['footprint_bytes']['snnet']:.2f} "
                      f"({smallest['route']})",
             met=smallest["footprint_bytes"]["export"] < smallest["footprint_bytes"]["snnet"]),
    ]
    return {
        "batch": params.batch,
        "snnet": {"params": total_params, "weight_bytes": total_bytes,
                  "build_resident_bytes": m_build["resident_after_bytes"], "routes": len(net.routes)},
        "memory_method": m_build["method"],
        "routes": rows,
        "goals": [g.to_dict() for g in goals],
    }


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    s = result["snnet"]
    rows = [["whole SN-Net", f"{s['params'] / 1e6:.2f} M", _mib(s["weight_bytes"]), _mib(s["build_resident_bytes"]),
             "-", "-"]]
    for r in result["routes"]:
        fp = r["forward_peak_bytes"]
        rows.append([
            f"`{r['route']}`", f"{r['params'] / 1e6:.2f} M", _mib(r["weight_bytes"]), _mib(r["export_resident_bytes"]),
            f"{_mib(fp['snnet'])} / {_mib(fp['export'])}",
            f"{_mib(r['footprint_bytes']['snnet'])} / {_mib(r['footprint_bytes']['export'])}",
        ])
    return (f"Batch {result['batch']}; memory measured as {result['memory_method']}. Resident: what building "
            f"the SN-Net, or exporting one route, added.\n\n"
            + md_table(["", "params", "weights MiB", "resident MiB", "forward peak MiB SN-Net / export",
                        "weights + peak MiB SN-Net / export"], rows))
