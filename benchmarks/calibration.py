"""4. Calibration: one pass with shared normal equations vs per-layer pseudo-inverse on stored activations.

* ``ours`` - :func:`stitchframe.calibrate`: every anchor runs once per batch,
  each stitching layer accumulates ``XᵀX`` / ``XᵀY`` in float64 (``XᵀX``
  shared by layers reading the same cut point), raw activations are dropped
  after each batch.
* ``reference`` - the reference implementation's way: run the anchors over
  all calibration images storing every needed cut-point activation, then
  for every stitching layer stack its rows and solve ``W = pinv(X) Y`` (bias
  column included) in the activations' dtype.

Both see the same images (random, generated batch by batch so the data
itself takes no memory).  A third measurement runs the real ``stitchframe
build`` path (:func:`stitchframe.build` on a ``synthetic`` dataset, whose
images are generated on access; no training, one evaluation batch) with
``calibration.batches`` set to cover 100, 1,000 and 10,000 images: its peak
memory above the resident process must stay flat, since the build streams the
calibration batches from the loader instead of collecting them in a list.
Those builds use the default ``calibration.ridge: auto``, which chooses each
layer's ridge by cross-validation over 4 folds of images (image ``i`` in fold
``i % 4``) and so keeps four sets of float64 normal equations (``XᵀX``,
``XᵀY``) per layer from the first batch on: fixed state, not per image, whose
size the benchmark computes from the layers' design widths and reports.  Reported per number of images: time ratio
(reference / ours, interleaved repeats), peak memory above the resident
model (CPU: peak RSS; CUDA: ``max_memory_allocated``), and how close the two
solutions are.  The reference is skipped where its stored activations would
exceed ``max_reference_bytes``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import attrs
import torch

from stitchframe import calibrate
from stitchframe.calibration import stitch_pairs

from . import families
from .harness import Context, Goal, describe_anchors, md_table, num_threads, peak_memory, summarize

NAME = "calibration"
TITLE = "Calibration: one pass vs stored activations + pinv"


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the calibration benchmark."""

    anchors: tuple
    images: tuple[int, ...] = (100, 1000, 10000)
    batch: int = 100
    repeats: int = 3
    repeats_large: int = 1  # repeats at the largest size
    max_reference_bytes: int = 8 * 2**30
    build_images: tuple[int, ...] = (100, 1000, 10000)  # through stitchframe.build; () skips it
    build_batch: int = 100  # calibration.batch_size of those builds
    threads: int | None = 1  # CPU; a shared machine slows multi-threaded runs several-fold


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    anchors = tuple(families.deit(32, ("tiny", "small")))
    return {
        "quick": Params(anchors=anchors, images=(100, 1000), repeats=2, repeats_large=2, build_images=(100, 1000)),
        "full": Params(anchors=anchors),
    }


def _batches(net: Any, n: int, batch: int, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    shape = families.input_size(net)
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        yield torch.randn(min(batch, n - start), *shape, generator=g).to(device)


def _needed(pairs: dict[str, set]) -> dict[str, set[int]]:
    needed: dict[str, set[int]] = defaultdict(set)
    for pts in pairs.values():
        for src, p, dst, q in pts:
            needed[src].add(p)
            needed[dst].add(q)
    return needed


def reference_calibrate(net: Any, batches: Iterator[torch.Tensor]) -> None:
    """Store all cut-point activations, then fit each layer by ``pinv(X) @ Y``."""
    pairs = stitch_pairs(net)
    needed = _needed(pairs)
    store: dict[tuple[str, int], list[torch.Tensor]] = defaultdict(list)
    with torch.no_grad():
        for x in batches:
            for name, pos in needed.items():
                for p, act in net.anchors[name].activations(x, sorted(pos)).items():
                    store[(name, p)].append(act)
        acts = {}
        for key in list(store):
            acts[key] = torch.cat(store.pop(key))
        for key, pts in pairs.items():
            layer = net.stitches[key]
            xs, ys = [], []
            for src, p, dst, q in sorted(pts):
                xs.append(layer.ls_rows(acts[(src, p)])["main"])
                ys.append(layer.ls_targets(acts[(dst, q)])["main"])
            x, y = torch.cat(xs), torch.cat(ys)
            xa = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
            w = torch.linalg.pinv(xa) @ y
            layer.ls_assign({"main": w})


def _stitch_state(net: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.stitches.state_dict().items()}


def _agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest relative difference ``|a - b| / |b|`` over the stitching layers' weights."""
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a if k.endswith("weight"))


def _reference_bytes(net: Any, n: int) -> int:
    total = 0
    for name, pos in _needed(stitch_pairs(net)).items():
        g = net.anchors[name].graph
        for p in pos:
            total += g.spec_at(p).example(1).numel() * 4
    return total * n


def _measure(net: Any, which: str, n: int, params: Params, ctx: Context) -> dict[str, Any]:
    batches = _batches(net, n, params.batch, ctx.seed + n, ctx.device)
    with peak_memory(ctx.device) as mem:
        t0 = time.perf_counter()
        if which == "ours":
            calibrate(net, batches)
        else:
            reference_calibrate(net, batches)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_bytes": mem["peak_bytes"], "method": mem["method"], "state": _stitch_state(net)}


def _run_size(net: Any, n: int, params: Params, ctx: Context) -> dict[str, Any]:
    ref_bytes = _reference_bytes(net, n)
    with_ref = ref_bytes <= params.max_reference_bytes
    reps = params.repeats_large if n == max(params.images) else params.repeats
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}
    for r in range(reps):
        order = ["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]
        for which in order:
            if which == "reference" and not with_ref:
                continue
            ctx.log(f"  [{NAME}] {n} images, {which}, repeat {r + 1}/{reps}")
            runs[which].append(_measure(net, which, n, params, ctx))
    row: dict[str, Any] = {
        "images": n,
        "repeats": reps,
        "reference_stored_activation_bytes": ref_bytes,
        "memory_method": runs["ours"][0]["method"],
        "ours": {"seconds": summarize([m["seconds"] for m in runs["ours"]]),
                 "peak_bytes": max(m["peak_bytes"] or 0 for m in runs["ours"]),
                 "peak_bytes_each": [m["peak_bytes"] for m in runs["ours"]]},
    }
    if with_ref:
        row["reference"] = {"seconds": summarize([m["seconds"] for m in runs["reference"]]),
                            "peak_bytes": max(m["peak_bytes"] or 0 for m in runs["reference"]),
                            "peak_bytes_each": [m["peak_bytes"] for m in runs["reference"]]}
        row["reference_over_ours_time"] = summarize(
            [b["seconds"] / a["seconds"] for a, b in zip(runs["ours"], runs["reference"])])
        row["relative_weight_difference"] = _agreement(runs["ours"][-1]["state"], runs["reference"][-1]["state"])
    else:
        row["reference"] = None
        row["reference_skipped"] = (f"its stored activations would take {ref_bytes / 2**30:.1f} GiB "
                                    f"(limit {params.max_reference_bytes / 2**30:.1f} GiB)")
    return row


def _num_classes(net: Any) -> int:
    from stitchframe.evaluate import logits_of

    a = next(iter(net.anchors.values()))
    with torch.no_grad():
        return int(logits_of(a(a.example_inputs.to(next(net.parameters()).device)), a.name).shape[-1])


def _build_spec(params: Params, n: int, classes: int, img_size: int, seed: int) -> Any:
    from stitchframe import parse_spec

    return parse_spec({
        "anchors": [dict(a) for a in params.anchors],
        "calibration": {"batches": -(-n // params.build_batch), "batch_size": params.build_batch},
        "data": {"name": "synthetic", "img_size": img_size,
                 "options": {"train_size": n, "val_size": 8, "num_classes": classes}},
        "train": {"epochs": 0, "batch_size": params.build_batch},
        "eval": {"batch_size": 8, "max_batches": 1},
        "seed": seed,
        "device": "cpu",
    })


def fold_state_bytes(net: Any) -> int:
    """Bytes of one fold's normal equations over all stitching layers (``ridge: auto`` keeps up to 4 folds).

    Each least-squares sub-problem of a layer holds ``XᵀX [d+1, d+1]`` and
    ``XᵀY [d+1, t]`` in float64, ``d`` its design width and ``t`` its target
    width (one layer per key: the default ``share_fit: pooled``).
    """
    total = 0
    for key, pts in stitch_pairs(net).items():
        src, p, dst, q = min(pts)
        layer = net.stitches[key]
        with torch.no_grad():
            rows = layer.ls_rows(net.anchors[src].graph.spec_at(p).example(1))
            targets = layer.ls_targets(net.anchors[dst].graph.spec_at(q).example(1))
        for k, r in rows.items():
            d, t = r.shape[1] + 1, targets[k].shape[1]
            total += 8 * (d * d + d * t)
    return total


def _run_builds(net: Any, params: Params, ctx: Context) -> list[dict[str, Any]]:
    """Peak memory of ``stitchframe.build`` calibrating on each number of images (CPU)."""
    from stitchframe import build

    classes, img_size = _num_classes(net), families.input_size(net)[1]
    image_bytes = 4 * int(torch.tensor(families.input_size(net)).prod())
    per_fold = fold_state_bytes(net)
    rows = []
    for i, n in enumerate((params.build_images[0], *params.build_images)):  # the first one warms up, not reported
        spec = _build_spec(params, n, classes, img_size, ctx.seed)
        ctx.log(f"  [{NAME}] stitchframe build, calibration on {n} images" + (" (warm-up)" if i == 0 else ""))
        with peak_memory(torch.device("cpu")) as mem:
            t0 = time.perf_counter()
            build(spec, output=ctx.work_dir / f"calibration-build-{n}", overwrite=True, registries=ctx.regs())
            seconds = time.perf_counter() - t0
        if i:
            folds = min(n, 4)  # ridge: auto, 4 folds of images (image i in fold i % 4) from the first batch
            rows.append({"images": n, "batches": spec.calibration.batches, "batch_size": params.build_batch,
                         "peak_bytes": mem["peak_bytes"], "method": mem["method"], "seconds": seconds,
                         "list_of_batches_bytes": n * image_bytes, "ridge_folds": folds,
                         "fold_state_bytes": folds * per_fold})
    return rows


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    net = families.build(params.anchors, ctx.regs(), device=ctx.device, seed=ctx.seed)
    with num_threads(params.threads if not ctx.cuda else None):
        for which in ("ours", "reference"):  # one-time library and allocator set-up, not measured
            _measure(net, which, params.batch, params, ctx)
        rows = [_run_size(net, n, params, ctx) for n in params.images]
        builds = _run_builds(net, params, ctx) if params.build_images and not ctx.cuda else []
    first, last = rows[0], rows[-1]
    ours_growth = last["ours"]["peak_bytes"] - first["ours"]["peak_bytes"]
    # the reference's growth: measured, or (where it was skipped) at least its stored activations
    ref_growth = (last["reference"]["peak_bytes"] if last.get("reference") else last["reference_stored_activation_bytes"])
    ref_growth -= first["reference"]["peak_bytes"] if first.get("reference") else 0
    goals = [
        Goal(name="our peak memory flat in the number of images",
             target=f"growth from {first['images']} to {last['images']} images < 5% of the reference's",
             measured=f"{first['ours']['peak_bytes'] / 2**20:.0f} -> {last['ours']['peak_bytes'] / 2**20:.0f} MiB "
                      f"(reference +{ref_growth / 2**20:.0f} MiB)",
             met=ours_growth < 0.05 * ref_growth),
    ]
    if builds:
        goals.append(_build_goal(builds))
    compared = [r for r in rows if r.get("reference")]
    if compared:
        worst = max(r["relative_weight_difference"] for r in compared)
        goals.append(Goal(name="same solution as the reference", target="relative weight difference < 1e-2",
                          measured=f"worst {worst:.1e}", met=worst < 1e-2,
                          note="float64 normal equations vs float32 pinv"))
    pairs = stitch_pairs(net)
    return {
        "stitching_layers": len(pairs),
        "stitch_points": sum(len(v) for v in pairs.values()),
        "routes": len(net.routes),
        "rows": rows,
        "builds": builds,
        "goals": [g.to_dict() for g in goals],
    }


def _build_goal(builds: list[dict[str, Any]]) -> Goal:
    """Peak memory of the builds flat within 10% (ridge auto's fold state is the same at every size)."""
    peaks = [b["peak_bytes"] for b in builds]
    lo, hi = min(peaks), max(peaks)
    return Goal(
        name="stitchframe build: calibration memory flat in the number of images",
        target=f"peak within 10% from {builds[0]['images']} to {builds[-1]['images']} images",
        measured=", ".join(f"{b['images']}: {b['peak_bytes'] / 2**20:.0f} MiB" for b in builds)
                 + f" (spread {(hi - lo) / max(lo, 1):.1%})",
        met=hi <= 1.1 * lo,
        note=f"ridge auto's fold state: {builds[-1]['fold_state_bytes'] / 2**20:.0f} MiB at every size; a list of "
             f"all batches would hold {builds[-1]['list_of_batches_bytes'] / 2**20:.0f} MiB of inputs at "
             f"{builds[-1]['images']} images")


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    anchors = describe_anchors(result["params"]["anchors"])
    rows = []
    for r in result["rows"]:
        ref = r.get("reference")
        rows.append([
            r["images"], r["repeats"], _mib(r["ours"]["peak_bytes"]),
            _mib(ref["peak_bytes"]) if ref else "skipped",
            f"{r['reference_over_ours_time']['median']:.2f}x" if ref else "-",
            f"{r['relative_weight_difference']:.1e}" if ref else "-",
        ])
    table = md_table(["images", "repeats", "ours: peak MiB", "reference: peak MiB", "time reference / ours",
                      "weight difference"], rows)
    skipped = [f"{r['images']} images: {r['reference_skipped']}" for r in result["rows"] if r.get("reference_skipped")]
    note = ("\n\nReference skipped: " + "; ".join(skipped)) if skipped else ""
    builds = ""
    if result.get("builds"):
        brows = [[b["images"], b["batches"], b["batch_size"], _mib(b["peak_bytes"]),
                  b.get("ridge_folds", "-"), _mib(b.get("fold_state_bytes")),
                  _mib(b["peak_bytes"] - b["fold_state_bytes"]) if "fold_state_bytes" in b else "-",
                  _mib(b["list_of_batches_bytes"]), f"{b['seconds']:.1f}"] for b in result["builds"]]
        builds = ("\n\nThrough `stitchframe build` (synthetic images generated on access, no training, one "
                  "evaluation batch); peak memory above the resident process over the whole build. "
                  "`calibration.ridge: auto` (the default) cross-validates over 4 folds of images and keeps one "
                  "set of float64 normal equations per fold and stitching layer from the first batch on: fixed "
                  "state, not per image, computed here from the layers' design widths:\n\n"
                  + md_table(["images", "calibration batches", "batch size", "build: peak MiB", "ridge folds",
                              "fold state MiB", "peak less fold state MiB", "a list of all batches would hold (MiB)",
                              "seconds"], brows))
    return (f"Anchors: {anchors}; {result['stitching_layers']} stitching layers on {result['stitch_points']} "
            f"stitch points ({result['routes']} routes); batches of {result['params']['batch']} random images. "
            f"Peak memory is above the resident model.\n\n{table}{note}{builds}")
