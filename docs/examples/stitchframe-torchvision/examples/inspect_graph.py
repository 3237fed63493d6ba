"""Concepts: look at an anchor's block graph (run from this folder; tested by tests/test_examples.py)."""

# --8<-- [start:graph]
import stitchframe

anchor = stitchframe.load_anchor(stitchframe.load_spec("mobilenet.yaml").anchors[0])
graph = anchor.graph  # traced once, on the anchor's example input (batch 1)
print(graph)
for pos in graph.positions():
    spec = graph.spec_at(pos)
    print(pos, graph.name_at(pos), spec.layout, spec.describe(), "stage", graph.stage_at(pos))
print(graph.blocks[3])
print(graph.flops, graph.flops_between(0, 4), graph.params)
# --8<-- [end:graph]
