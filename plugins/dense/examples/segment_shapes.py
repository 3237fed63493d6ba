"""Segment synthetic shapes with every route of a stitched backbone (SN-Netv2 for dense prediction).

    python plugins/dense/examples/segment_shapes.py plugins/dense/examples/shapes_vits.yaml [--steps 600]

Loads the spec's anchors and stitch space, calibrates the stitches on shapes images, wraps the SN-Net
in a StitchedBackbone (4 levels at 1/4..1/32 of the input), trains backbone and FPN-lite head together
with one route per step (round robin over --train-routes, default every route), then prints the mIoU of
every route and writes them to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from stitchframe_dense import (
    FPNLiteHead,
    Segmenter,
    ShapesSegmentation,
    StitchedBackbone,
    evaluate_segmentation,
    train_segmentation,
)

import stitchframe


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="spec YAML: anchors and stitch space (data/train sections are not used)")
    ap.add_argument("--steps", type=int, default=600, help="training steps (one route each)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--channels", type=int, default=64, help="channels of every feature level")
    ap.add_argument("--train-routes", type=int, nargs="*", help="route ids to train (default: all)")
    ap.add_argument("--freeze-backbone", action="store_true", help="train only the projections and the head")
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument("--out", default="runs/dense-shapes/miou.json")
    args = ap.parse_args(argv)

    spec = stitchframe.load_spec(args.spec)
    torch.manual_seed(spec.seed)
    device = "cuda" if torch.cuda.is_available() and spec.device != "cpu" else "cpu"
    net = stitchframe.assemble(spec)
    first = next(iter(net.anchors.values()))
    size = tuple(first.example_inputs.shape[-2:])
    norm = {"mean": first.preprocess.mean, "std": first.preprocess.std}
    train_data = ShapesSegmentation(args.train_size, size, seed=spec.seed, **norm)
    val_data = ShapesSegmentation(args.val_size, size, seed=spec.seed + 1, **norm)
    starts = range(0, min(spec.calibration.batches * 32, len(train_data)), 32)
    batches = [torch.stack([train_data[i][0] for i in range(b, min(b + 32, len(train_data)))]) for b in starts]
    stitchframe.calibrate(net, batches, ridge=spec.calibration.ridge)

    backbone = StitchedBackbone(net, out_channels=args.channels)
    model = Segmenter(backbone, FPNLiteHead(backbone.out_channels, train_data.num_classes, dim=args.channels)).to(
        device
    )
    routes = args.train_routes or list(range(len(net.routes)))
    history = train_segmentation(
        model,
        train_data,
        routes=routes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        train_backbone=not args.freeze_backbone,
        seed=spec.seed,
    )
    metrics = evaluate_segmentation(
        model, val_data, routes=list(range(len(net.routes))), num_classes=train_data.num_classes
    )

    print(f"{'id':>3}  {'GFLOPs':>7}  {'mIoU':>6}  {'pixel acc':>9}  {'last loss':>9}  route")
    rows = []
    for rid, route in enumerate(net.routes):
        m, losses = metrics[rid], history.get(rid, [])
        last = sum(losses[-10:]) / len(losses[-10:]) if losses else float("nan")
        print(f"{rid:>3}  {route.flops / 1e9:7.3f}  {m.miou:6.3f}  {m.pixel_accuracy:9.3f}  {last:9.3f}  {route}")
        rows.append(
            {
                "id": rid,
                "route": route.describe(),
                "flops": route.flops,
                "miou": m.miou,
                "pixel_accuracy": m.pixel_accuracy,
                "iou": m.iou,
            }
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"spec": str(args.spec), "steps": args.steps, "routes": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return {"routes": rows}


if __name__ == "__main__":
    main()
