"""How-to: choose a route under a budget (run from this folder; tested by tests/test_examples.py)."""

import torch

import stitchframe

net = stitchframe.assemble(stitchframe.load_spec("mobilenet.yaml"))
stitchframe.calibrate(net, [torch.randn(8, 3, 64, 64) for _ in range(2)])
net.eval()

# --8<-- [start:budget]
route = net.select_for(max_flops=25e6)  # most FLOPs within the budget while no accuracy is recorded
print(route, route.flops)
route = net.select_for(max_flops=25e6, max_params=3e6)
print(route, route.params)
# --8<-- [end:budget]

# --8<-- [start:record]
# Record a measured metric on each route (here: agreement with the largest anchor on some inputs).
images = torch.randn(32, 3, 64, 64)
largest = max(range(len(net.routes)), key=lambda i: net.routes[i].flops)
with torch.no_grad():
    reference = net.forward_route(images, largest).argmax(dim=1)
    for i in range(len(net.routes)):
        agreement = (net.forward_route(images, i).argmax(dim=1) == reference).float().mean().item()
        net.set_route_meta(i, accuracy=agreement)
# --8<-- [end:record]

# --8<-- [start:best]
route = net.select_for(max_flops=25e6)  # now: the highest "accuracy" within the budget
print(route, route.meta["accuracy"])
route = net.select_for(max_flops=25e6, metric="accuracy")  # the metric name is an argument
# --8<-- [end:best]

# --8<-- [start:too_small]
try:
    net.select_for(max_flops=1e6)
except stitchframe.StitchframeError as exc:
    print(exc)  # No route fits max_flops=1000000.0, ...; the cheapest route is ... with ... FLOPs
# --8<-- [end:too_small]
