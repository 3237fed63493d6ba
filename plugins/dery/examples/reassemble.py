"""Reassemble a small heterogeneous zoo (a ViT, a Swin and a ResNet) with the ``dery`` space.

Runs offline on a CPU in seconds: the three timm models are built at 32x32 with random weights (swap in
``pretrained=True`` and 224x224 inputs for real ones).  Usage::

    python plugins/dery/examples/reassemble.py
"""

from __future__ import annotations

import timm
import torch
from stitchframe_timm import timm_anchor

import stitchframe

# --8<-- [start:zoo]
ZOO = {
    "deit": ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4, "num_heads": 3}),
    "swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 32, "embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 2}),
    "resnet": ("resnet18", {}),
}


def load_zoo() -> list[stitchframe.Anchor]:
    anchors = []
    for i, (name, (model, kwargs)) in enumerate(ZOO.items()):
        torch.manual_seed(i)
        net = timm.create_model(model, pretrained=False, num_classes=10, **kwargs).eval()
        anchors.append(timm_anchor(net, name=name, source=f"timm:{model}", img_size=32))
    return anchors
# --8<-- [end:zoo]


def main() -> None:
    # --8<-- [start:build]
    anchors = load_zoo()
    g = torch.Generator().manual_seed(0)
    probe = [torch.randn(16, 3, 32, 32, generator=g) for _ in range(4)]  # use real images: a DataLoader works
    net = stitchframe.build_snnet(
        anchors,
        space="dery",
        space_options={
            "stages": 3,
            "budgets": [{"max_params": 1.0e6}, {"max_flops": 3.0e7}],
            "top": 2,
            "probe_samples": 64,
            "score_samples": 16,
        },
        probe=probe,
        seed=0,
    )
    for i, route in enumerate(net.routes):
        scores = {k: round(route.meta[k], 2) for k in ("naswot", "jacov") if route.meta.get(k) is not None}
        print(f"{i}: {route.describe()}  {route.flops / 1e6:.1f} MFLOPs  {route.params / 1e6:.2f} M params  {scores}")
    # --8<-- [end:build]

    # --8<-- [start:use]
    stitchframe.calibrate(net, probe)  # least squares for every stitching layer, one pass
    route = next(r for r in net.routes if r.meta["kind"] == "dery")
    module = net.export(route).eval()  # only this assembly's weights
    program = torch.export.export(module, (probe[0][:2],))
    print(f"exported {route.describe()}: {sum(p.numel() for p in module.parameters())} parameters")
    print(program.module()(probe[0][:2]).shape)
    # --8<-- [end:use]


if __name__ == "__main__":
    main()
