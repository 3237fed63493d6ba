"""Use a finished build from Python (the quickstart's second half; tested by tests/test_use_build_example.py).

    python examples/use_build.py [OUT]      # OUT: a `stitchframe build` output folder, default runs/default
"""

import sys

import torch

import stitchframe

out = sys.argv[1] if len(sys.argv) > 1 else "runs/default"

# --8<-- [start:load]
net = stitchframe.load_snnet(out)  # rebuilt from out/spec.yaml and out/snnet.safetensors, in eval mode
cheapest = min(net.routes, key=lambda r: r.flops)
route = net.select_for(max_flops=2 * cheapest.flops)  # the most accurate route within the budget
print(f"{route}: {route.meta['accuracy']:.2f}% at {route.flops / 1e9:.3f} GFLOPs")

size = next(iter(net.anchors.values())).preprocess.input_size  # (C, H, W) every anchor takes
images = torch.randn(4, *size)  # stands in for a batch of preprocessed images
with torch.no_grad():
    logits = net(images)  # runs the selected route
    net.select(0)  # switching is a table lookup: no reload
    logits_0 = net(images)
# --8<-- [end:load]

# --8<-- [start:export]
module = net.export(route)  # a standalone nn.Module with only this route's weights
stitchframe.save_module(module, "route.safetensors", kind="route", metadata={"route": route.to_dict()})

exported = stitchframe.export_route(out, max_flops=2 * cheapest.flops, dest="route_files/best.safetensors")
print("wrote", exported.weights, exported.description)  # route_files/best.safetensors and best.json
again = stitchframe.load_route("route_files/best.json")  # only this route, from these two files (no build folder)
with torch.no_grad():
    assert torch.equal(again(images), logits)
# --8<-- [end:export]
