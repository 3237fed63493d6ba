"""Concepts: a hand-written training loop and route evaluation with the core API.

Run from this folder; tested by tests/test_examples.py.
"""

import random

import torch
import torch.nn.functional as F

import stitchframe

net = stitchframe.assemble(stitchframe.load_spec("mobilenet.yaml"))
images, labels = torch.randn(32, 3, 64, 64), torch.randint(0, 1000, (32,))
stitchframe.calibrate(net, [images[:16], images[16:]])

# --8<-- [start:train]
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
net.train()
for step in range(4):
    net.select(random.randrange(len(net.routes)))  # one route per step
    batch = torch.randint(0, len(images), (8,))
    loss = F.cross_entropy(net(images[batch]), labels[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
# --8<-- [end:train]

# --8<-- [start:evaluate]
net.eval()
with torch.no_grad():
    for i, route in enumerate(net.routes):
        correct = (net.forward_route(images, i).argmax(dim=1) == labels).float().mean().item()
        net.set_route_meta(i, accuracy=correct)
for route in sorted(net.routes, key=lambda r: r.flops):
    print(f"{route.flops / 1e6:7.1f} MFLOPs  {route.meta['accuracy']:.3f}  {route}")
# --8<-- [end:evaluate]
