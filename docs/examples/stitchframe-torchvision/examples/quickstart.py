"""The quickstart, as one script (run from this folder; tested by tests/test_examples.py)."""

# --8<-- [start:assemble]
import torch

import stitchframe

spec = stitchframe.load_spec("mobilenet.yaml")
net = stitchframe.assemble(spec)  # load the anchors through their plugin, build every route
print(len(net.routes), "routes")
for i, route in enumerate(net.routes):
    print(i, route, f"{route.flops / 1e6:.1f} MFLOPs, {route.params / 1e6:.2f} M params")
# --8<-- [end:assemble]

# --8<-- [start:calibrate]
# A few batches of training inputs (random here; use real images).
batches = [torch.randn(8, 3, 64, 64) for _ in range(4)]
rows = stitchframe.calibrate(net, batches)  # least squares for every stitching layer, one pass
print(f"fitted {len(rows)} stitching layers")
# --8<-- [end:calibrate]

# --8<-- [start:switch]
net.eval()
images = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    net.select(0)  # by id
    logits_small = net(images)
    net.select("mobilenet_v3_small[0:5] -> dwconv -> mobilenet_v3_large[8:15]")  # by name
    logits_mid = net(images)
print(net.selected_id, net.selected.flops)
# --8<-- [end:switch]

# --8<-- [start:export]
route = net.select_for(max_flops=30e6)  # the best route within 30 MFLOPs
module = net.export(route)  # a standalone nn.Module holding only this route's weights
stitchframe.save_module(module, "route.safetensors", kind="route", metadata={"route": route.to_dict()})
print("saved", route)
# --8<-- [end:export]
