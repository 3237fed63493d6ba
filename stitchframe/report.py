"""Reports: the route table (markdown and JSON), the Pareto front and its plot.

A route *record* is a plain dict (``id``, ``route``, ``kind``, ``anchors``,
``flops``, ``macs``, ``params``, ``accuracy``, ``loss``, ``latency_ms``,
``pareto``, and the task's metric when it is not ``accuracy``, e.g. ``miou``).
Costs are per example: ``macs`` are multiply-adds (the SN-Net papers'
"FLOPs"), ``flops`` torch's convention (a multiply-add is 2 FLOPs), both
counted by :func:`stitchframe.count_flops` (normalisation layers included);
accuracy is top-1 in percent for classification (pixel accuracy for
segmentation).  Routes are ranked by the task's *metric* (``accuracy`` for
classification; every function below takes ``metric=``).

The summary answers SN-Net's central question: do the stitched routes
interpolate the anchors?  For every stitched route whose FLOPs lie between
two neighbouring anchors (by FLOPs), it compares the route's metric with
the straight line joining those two anchors in the metric-FLOPs plane.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .io import atomic_write, write_json
from .routes import Route

__all__ = [
    "route_records",
    "pareto_front",
    "anchor_line_summary",
    "routes_markdown",
    "summary_sentence",
    "plot_pareto",
    "write_report",
    "route_table",
    "FLOPS_UNIT",
    "MACS_UNIT",
]

#: How FLOPs are counted in every report.
FLOPS_UNIT = "FLOPs per example, torch convention (one multiply-add = 2 FLOPs), normalisation layers included"
#: How MACs are counted in every report.
MACS_UNIT = "multiply-adds per example (the SN-Net papers' 'FLOPs'): half the FLOPs"

_TOL = 1e-9


def route_records(routes: Sequence[Route], metric: str = "accuracy") -> list[dict[str, Any]]:
    """One plain record per route (in id order), with the Pareto flag (by ``metric``) filled in."""
    records = []
    for i, r in enumerate(routes):
        records.append({
            "id": i,
            "route": r.describe(),
            "kind": "anchor" if r.is_anchor else str(r.meta.get("kind", "stitched")),
            "anchors": list(r.anchors),
            "flops": r.flops,
            "macs": r.macs,
            "params": r.params,
            "accuracy": r.meta.get("accuracy"),
            "loss": r.meta.get("loss"),
            "latency_ms": r.meta.get("latency_ms"),
        })
        if metric != "accuracy":
            records[-1][metric] = r.meta.get(metric)
    front = set(pareto_front(records, y=metric))
    for rec in records:
        rec["pareto"] = rec["id"] in front
    return records


def pareto_front(records: Sequence[dict[str, Any]], *, x: str = "flops", y: str = "accuracy") -> list[int]:
    """Ids of the routes no other route beats: none is as cheap and strictly more accurate, or cheaper and as accurate.

    Args:
        records: Route records.
        x: Cost key (lower is better).
        y: Quality key (higher is better); records without it are ignored.

    Returns:
        Ids on the front, from cheapest to most expensive.
    """
    pts = sorted((r for r in records if r.get(y) is not None and r.get(x) is not None),
                 key=lambda r: (r[x], -r[y], r["id"]))
    front, best = [], float("-inf")
    for r in pts:
        if r[y] > best + _TOL:
            front.append(r["id"])
            best = r[y]
    return front


def anchor_line_summary(records: Sequence[dict[str, Any]], metric: str = "accuracy") -> dict[str, Any]:
    """How stitched routes compare with the line between neighbouring anchors, by ``metric``.

    Returns:
        ``metric``, ``stitched`` (stitched routes with the metric),
        ``between_anchors`` (those whose FLOPs lie between two neighbouring
        anchors), ``on_or_above_line``, ``below_line``,
        ``within_anchor_accuracy`` (metric between the two anchors'),
        ``on_front`` (stitched routes on the Pareto front) and ``intervals``,
        one entry per pair of neighbouring anchors with the same counts.
    """
    anchors = sorted((r for r in records if r["kind"] == "anchor" and r.get(metric) is not None),
                     key=lambda r: r["flops"])
    stitched = [r for r in records if r["kind"] != "anchor" and r.get(metric) is not None]
    intervals = []
    for lo, hi in zip(anchors, anchors[1:]):
        inside = [r for r in stitched if lo["flops"] <= r["flops"] <= hi["flops"]]
        span = hi["flops"] - lo["flops"]
        above = within = 0
        for r in inside:
            t = (r["flops"] - lo["flops"]) / span if span else 0.0
            line = lo[metric] + t * (hi[metric] - lo[metric])
            above += r[metric] >= line - _TOL
            low, high = sorted((lo[metric], hi[metric]))
            within += low - _TOL <= r[metric] <= high + _TOL
        intervals.append({"from": lo["route"], "to": hi["route"], "routes": len(inside),
                          "on_or_above_line": above, "within_anchor_accuracy": within})
    between = sum(iv["routes"] for iv in intervals)
    above = sum(iv["on_or_above_line"] for iv in intervals)
    return {
        "metric": metric,
        "stitched": len(stitched),
        "between_anchors": between,
        "on_or_above_line": above,
        "below_line": between - above,
        "within_anchor_accuracy": sum(iv["within_anchor_accuracy"] for iv in intervals),
        "on_front": sum(bool(r.get("pareto")) for r in stitched),
        "intervals": intervals,
    }


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def routes_markdown(records: Sequence[dict[str, Any]], summary: dict[str, Any] | None = None, *,
                    title: str = "Routes", metric: str = "accuracy", metric_label: str = "top-1 %") -> str:
    """The route table as markdown, cheapest route first, with the summary below it.

    A ``metric`` other than ``accuracy`` gets its own column (``metric_label``) before the accuracy's.
    """
    if metric == "accuracy":
        legend = (f"MACs: {MACS_UNIT}. FLOPs: {FLOPS_UNIT}. Accuracy: top-1 (%). "
                  "Front: on the accuracy-cost Pareto front.")
        head, cols = "top-1 %", ["accuracy"]
    else:
        legend = (f"MACs: {MACS_UNIT}. FLOPs: {FLOPS_UNIT}. {metric_label}: the task's metric ({metric}); "
                  f"accuracy %: the task's accuracy. Front: on the {metric}-cost Pareto front.")
        head, cols = f"{metric_label} | accuracy %", [metric, "accuracy"]
    lines = [f"# {title}", "", legend, ""]
    lines += [f"| id | route | kind | GMACs | GFLOPs | M params | {head} | loss | latency ms | front |",
              "|---:|---|---|---:|---:|---:|" + "---:|" * len(cols) + "---:|---:|:---:|"]
    for r in sorted(records, key=lambda r: (r["flops"] or 0, r["id"])):
        values = " | ".join(_fmt(r.get(c), ".2f") for c in cols)
        lines.append(
            f"| {r['id']} | `{r['route']}` | {r['kind']} | {_fmt((r['flops'] or 0) / 2e9, '.4f')} | "
            f"{_fmt((r['flops'] or 0) / 1e9, '.4f')} | "
            f"{_fmt((r['params'] or 0) / 1e6, '.3f')} | {values} | {_fmt(r['loss'], '.4f')} | "
            f"{_fmt(r['latency_ms'], '.3f')} | {'*' if r.get('pareto') else ''} |"
        )
    if summary is not None:
        lines += ["", summary_sentence(summary)]
    return "\n".join(lines) + "\n"


def summary_sentence(summary: dict[str, Any]) -> str:
    """One sentence summarising :func:`anchor_line_summary`."""
    metric = summary.get("metric", "accuracy")
    return (
        f"{summary['stitched']} stitched routes evaluated; {summary['between_anchors']} lie between neighbouring "
        f"anchors by FLOPs, of which {summary['on_or_above_line']} are on or above the line joining those anchors "
        f"and {summary['within_anchor_accuracy']} have {'an accuracy' if metric == 'accuracy' else 'a ' + metric} "
        "between theirs; "
        f"{summary['on_front']} stitched routes are on the Pareto front."
    )


def plot_pareto(records: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "",
                metric: str = "accuracy", metric_label: str = "top-1 %") -> Path | None:
    """Plot ``metric`` against GMACs (GFLOPs on the top axis) to a PNG: routes, anchors (labelled), the Pareto front.

    Uses matplotlib's Agg canvas (no display needed, no global pyplot state).

    Returns:
        The path written, or ``None`` when no route has the metric.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = [r for r in records if r.get(metric) is not None]
    if not pts:
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    stitched = [r for r in pts if r["kind"] != "anchor"]
    anchors = sorted((r for r in pts if r["kind"] == "anchor"), key=lambda r: r["flops"])
    ax.scatter([r["flops"] / 2e9 for r in stitched], [r[metric] for r in stitched],
               s=18, alpha=0.7, color="tab:blue", label=f"stitched routes ({len(stitched)})")
    if len(anchors) > 1:
        ax.plot([r["flops"] / 2e9 for r in anchors], [r[metric] for r in anchors],
                ":", color="grey", linewidth=1, label="line between anchors")
    by_id = {r["id"]: r for r in pts}
    front = [by_id[i] for i in pareto_front(pts, y=metric)]
    ax.step([r["flops"] / 2e9 for r in front], [r[metric] for r in front], where="post", color="black",
            linewidth=1.2, marker="o", markersize=7, markerfacecolor="none", label="Pareto front")
    ax.scatter([r["flops"] / 2e9 for r in anchors], [r[metric] for r in anchors],
               marker="*", s=160, color="tab:red", zorder=3, label="anchors")
    for r in anchors:
        ax.annotate(r["anchors"][0], (r["flops"] / 2e9, r[metric]), textcoords="offset points",
                    xytext=(6, -12), fontsize=9)
    ax.set_xlabel("GMACs per example (multiply-adds, the papers' unit)")
    top = ax.secondary_xaxis("top", functions=(lambda macs: 2 * macs, lambda flops: flops / 2))
    top.set_xlabel("GFLOPs per example (1 multiply-add = 2 FLOPs)")
    ax.set_ylabel("top-1 accuracy (%)" if metric == "accuracy" else metric_label)
    ax.set_title(title or ("accuracy vs cost" if metric == "accuracy" else f"{metric} vs cost"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def write_report(routes: Sequence[Route], out_dir: str | os.PathLike[str], *, title: str = "Routes",
                 data: str | None = None, metric: str = "accuracy", metric_label: str = "top-1 %") -> dict[str, Any]:
    """Write ``routes.json``, ``routes.md`` and ``pareto.png`` into ``out_dir``.

    Args:
        routes: The routes, with their metrics in ``meta``.
        out_dir: The folder to write into.
        title: Title of ``routes.md`` and the plot (name the data evaluated on).
        data: Name of the dataset the metrics were measured on, recorded in ``routes.json``.
        metric: The route metadata key that ranks routes (the task's metric; higher is better).
        metric_label: How tables and the plot name it.

    Returns:
        The summary (see :func:`anchor_line_summary`).
    """
    out = Path(out_dir)
    records = route_records(routes, metric)
    summary = anchor_line_summary(records, metric)
    extra = {} if metric == "accuracy" else {"metric": metric, "metric_label": metric_label}
    write_json(out / "routes.json", {
        "flops_unit": FLOPS_UNIT,
        "macs_unit": MACS_UNIT,
        "accuracy_unit": "top-1 %" if metric == "accuracy" else "%",
        **extra,
        "data": data,
        "routes": records,
        "pareto": pareto_front(records, y=metric),
        "summary": summary,
    })
    markdown = routes_markdown(records, summary, title=title, metric=metric, metric_label=metric_label)
    atomic_write(out / "routes.md", lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"))
    plot_pareto(records, out / "pareto.png", title=title, metric=metric, metric_label=metric_label)
    return summary


def route_table(routes: Sequence[Route], *, title: str = "routes") -> Any:
    """A rich table of routes, cheapest first: id, route, GMACs, GFLOPs, M params, and any recorded metrics.

    Every cell and the title are :class:`rich.text.Text`, so route names and paths print literally on any
    console (no markup, no ``:emoji:`` codes).
    """
    from rich.table import Table
    from rich.text import Text

    metrics = sorted({k for r in routes for k, v in r.meta.items() if isinstance(v, (int, float)) and k != "kind"})
    table = Table(title=Text(title))
    for col in ("id", "route", "GMACs", "GFLOPs", "M params", *metrics):
        table.add_column(Text(col), justify="left" if col == "route" else "right")
    for i, r in sorted(enumerate(routes), key=lambda ir: ir[1].flops or 0):
        vals = [f"{r.meta[m]:.4g}" if isinstance(r.meta.get(m), (int, float)) else "" for m in metrics]
        flops = r.flops or 0
        cells = [str(i), r.describe(), f"{flops / 2e9:.3f}", f"{flops / 1e9:.3f}", f"{(r.params or 0) / 1e6:.2f}",
                 *vals]
        table.add_row(*(Text(c) for c in cells))
    return table
