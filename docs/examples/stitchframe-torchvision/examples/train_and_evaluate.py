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

# --8<-- [start:train_api]
from stitchframe import TrainSpec, train_snnet

data = torch.utils.data.TensorDataset(images, labels)  # (inputs, target) pairs
cfg = TrainSpec(epochs=1, batch_size=8, lr=1e-4, sampling="flops_grouped", flops_groups=4, checkpoint_every=2)
result = train_snnet(net, data, cfg, device="cpu", checkpoint_dir="checkpoints", seed=0)
print(f"{result.steps} steps, routes {result.routes}, last loss {result.final_loss:.3f}")
# --8<-- [end:train_api]

# --8<-- [start:evaluate_api]
evaluation = stitchframe.evaluate_routes(net, data, batch_size=16, partial_path="evaluation.jsonl")
print(f"{evaluation.block_forwards} block forwards instead of {evaluation.naive_block_forwards}")
for r in evaluation.routes[:3]:
    print(r.id, r.name, f"{r.accuracy:.1f}%", f"loss {r.loss:.3f}")
# --8<-- [end:evaluate_api]
