"""How-to: export a route (run from this folder; tested by tests/test_examples.py)."""

import torch

import stitchframe

net = stitchframe.assemble(stitchframe.load_spec("mobilenet.yaml"))
stitchframe.calibrate(net, [torch.randn(8, 3, 64, 64) for _ in range(2)])

# --8<-- [start:export]
route = "mobilenet_v3_small[0:5] -> dwconv -> mobilenet_v3_large[8:15]"
module = net.export(route).eval()  # deep copies: later training of `net` does not change it
images = torch.randn(4, 3, 64, 64)
net.eval()
with torch.no_grad():
    assert torch.equal(module(images), net.forward_route(images, route))
# --8<-- [end:export]

# --8<-- [start:safetensors]
meta = {"route": module.route.to_dict()}
stitchframe.save_module(module, "route.safetensors", kind="route", metadata=meta)

copy = net.export(route).eval()  # same structure; weights come from the file
stitchframe.load_module_state(copy, "route.safetensors", kind="route")
# --8<-- [end:safetensors]

# --8<-- [start:torch_export]
program = torch.export.export(module, (images,))
torch.export.save(program, "route.pt2")
with torch.no_grad():
    torch.testing.assert_close(program.module()(images), module(images))
# --8<-- [end:torch_export]

# --8<-- [start:onnx]
onnx_program = torch.onnx.export(module, (images,), dynamo=True)  # needs the onnx and onnxscript packages
onnx_program.save("route.onnx")
# --8<-- [end:onnx]

# --8<-- [start:standalone]
exported = stitchframe.export_route(net, route=route, dest="deploy/route.safetensors")
again = stitchframe.load_route("deploy/route.json")  # builds only this route; reads only its weights
with torch.no_grad():
    assert torch.equal(again(images), module(images))
# --8<-- [end:standalone]

# --8<-- [start:merge]
merged = net.export(route, merge=True)  # calls merge() on every stitching layer of the copy
# lowrank folds its update B·A into its base weight; dwconv has nothing to fold
# --8<-- [end:merge]
