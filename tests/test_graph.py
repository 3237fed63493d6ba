from __future__ import annotations

import pytest
import torch

from stitchframe import ActivationSpec, ShapeMismatchError


def test_infer_tokens_with_prefix():
    spec = ActivationSpec.infer(torch.zeros(2, 1 + 14 * 14, 192), "tokens", prefix=1)
    assert spec == ActivationSpec(layout="tokens", channels=192, grid=(14, 14), prefix=1)
    assert spec.shape() == ("B", 197, 192)
    assert spec.describe() == "(B,197,192)"
    assert spec.positions == 196


def test_infer_map_nhwc_sequence():
    assert ActivationSpec.infer(torch.zeros(1, 8, 4, 6), "map").grid == (4, 6)
    nhwc = ActivationSpec.infer(torch.zeros(1, 4, 6, 8), "nhwc")
    assert (nhwc.channels, nhwc.grid) == (8, (4, 6))
    seq = ActivationSpec.infer(torch.zeros(1, 7, 32), "sequence", variable_length=True)
    assert seq.length is None and seq.shape(3) == (3, "L", 32)
    assert ActivationSpec.infer(torch.zeros(1, 7, 32), "sequence").length == 7


def test_non_square_tokens_need_a_grid():
    with pytest.raises(ShapeMismatchError, match="grid"):
        ActivationSpec.infer(torch.zeros(1, 1 + 12, 8), "tokens", prefix=1)
    spec = ActivationSpec.infer(torch.zeros(1, 1 + 12, 8), "tokens", prefix=1, grid=(3, 4))
    assert spec.grid == (3, 4)


def test_wrong_rank_is_a_shape_error():
    with pytest.raises(ShapeMismatchError, match="4-D"):
        ActivationSpec.infer(torch.zeros(1, 2, 3), "map")


def test_spec_validation():
    with pytest.raises(ValueError, match="grid"):
        ActivationSpec(layout="map", channels=3)
    with pytest.raises(ValueError, match="prefix"):
        ActivationSpec(layout="map", channels=3, grid=(2, 2), prefix=1)
    with pytest.raises(ValueError):
        ActivationSpec(layout="volume", channels=3)


def test_check_and_example_round_trip():
    spec = ActivationSpec(layout="tokens", channels=16, grid=(2, 2), prefix=2)
    x = spec.example(3)
    assert x.shape == (3, 6, 16)
    spec.check(x)
    with pytest.raises(ShapeMismatchError, match=r"\(B,6,16\)"):
        spec.check(torch.zeros(3, 5, 16), where="a.blocks[0]")


def test_block_graph_of_tiny_vit(vit_family):
    a = vit_family[0]
    g = a.graph
    assert g.depth == 4
    assert list(g.nx.nodes) == ["stem", "blocks[0]", "blocks[1]", "blocks[2]", "blocks[3]", "head"]
    assert list(g.nx.successors("blocks[1]")) == ["blocks[2]"]
    node = g.nx.nodes["blocks[2]"]
    assert node["index"] == 2 and node["path"] == "blocks.2" and node["flops"] > 0
    assert node["out_spec"] == ActivationSpec(layout="tokens", channels=32, grid=(4, 4), prefix=1)
    assert g.stem.path == "embed" and g.head.path == "head"
    assert g.spec_at(0) == g.spec_at(4)
    assert g.name_at(3) == "vit32.blocks[2]"
    assert g.flops == g.stem.flops + sum(b.flops for b in g.blocks) + g.head.flops
    assert g.params == sum(p.numel() for p in a.parameters())
    with pytest.raises(IndexError):
        g.spec_at(5)


def test_block_graph_of_tiny_cnn_has_stages(cnn_family):
    g = cnn_family[0].graph
    assert g.stages() == [0, 0, 0, 1]
    assert g.spec_at(2).grid == (8, 8) and g.spec_at(3).grid == (4, 4)
    assert g.spec_at(3).layout == "map" and g.spec_at(3).channels == 16
