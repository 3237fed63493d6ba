from __future__ import annotations

import pytest
import torch
from torch import nn

from stitchframe import Anchor, StitchframeError, anchor_name, count_flops
from tests import tiny


def test_anchor_route_equals_model(vit_family, cnn_family):
    x = tiny.images(4)
    for anchor in [*vit_family, *cnn_family]:
        assert anchor(x).shape == (4, 10)
    model = tiny.tiny_vit(32, seed=0)
    anchor = tiny.vit_anchor(model, "v")
    model_out = model(x)
    assert torch.equal(anchor(x), model_out)
    cnn = tiny.tiny_cnn(8, seed=0)
    assert torch.equal(tiny.cnn_anchor(cnn, "c")(x), cnn(x))


def test_activations_stop_at_the_deepest_position(vit_family):
    a = vit_family[1]
    x = tiny.images(2)
    acts = a.activations(x, [0, 2])
    assert set(acts) == {0, 2}
    manual = a.blocks[1](a.blocks[0](a.stem(x)))
    assert torch.equal(acts[2], manual)
    assert a.activations(x, []) == {}


# --8<-- [start:downsample]
class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


class StagedCNN(nn.Module):
    """Stages of blocks, each stage after the first opened by a downsampling layer outside its blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.ModuleList()
        for i, width in enumerate((8, 16, 32)):
            stage = nn.Module()
            stage.downsample = nn.Conv2d(width // 2, width, 2, stride=2) if i else nn.Identity()
            stage.blocks = nn.Sequential(ResidualBlock(width), ResidualBlock(width))
            self.stages.append(stage)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage.blocks(stage.downsample(x))
        return self.head(x)


def staged_anchor(model: StagedCNN) -> Anchor:
    """Each stage's downsampling runs with the stage's first block, wrapped as one block of the anchor."""
    blocks, stages = [], [0]
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            first = j == 0 and not isinstance(stage.downsample, nn.Identity)
            blocks.append(nn.Sequential(stage.downsample, block) if first else block)
            stages.append(i)
    return Anchor("staged", stem=model.stem, blocks=blocks, head=model.head, layout="map", stages=stages,
                  example_inputs=torch.randn(1, 3, 32, 32), model=model)
# --8<-- [end:downsample]


def test_downsampling_outside_the_blocks_is_wrapped_with_the_first_block():
    """The docs' recipe: the anchor computes the model, and the graph records both wrapped modules."""
    from stitchframe.testing import check_anchor

    model = StagedCNN().eval()
    anchor = staged_anchor(model)
    check_anchor(anchor, model=model)
    assert [b.path for b in anchor.graph.blocks] == [
        "stages.0.blocks.0", "stages.0.blocks.1",
        "stages.1.downsample+stages.1.blocks.0", "stages.1.blocks.1",
        "stages.2.downsample+stages.2.blocks.0", "stages.2.blocks.1",
    ]
    assert [anchor.graph.spec_at(p).grid for p in (2, 3, 5)] == [(32, 32), (16, 16), (8, 8)]


def test_block_paths_of_wrappers_name_the_wrapped_modules():
    """A block the adapter wraps around model modules records their paths joined by '+'."""
    model = tiny.tiny_cnn(8, seed=0)
    merged = nn.Sequential(model.layers[1], model.layers[2])
    a = Anchor("c", stem=model.stem, blocks=[model.layers[0], merged], head=model.head, layout="map",
               example_inputs=torch.randn(1, 3, 16, 16), model=model)
    assert [b.path for b in a.graph.blocks] == ["layers.0", "layers.1+layers.2"]
    assert a.graph.stem.path == "stem" and a.graph.head.path == "head"
    plain = Anchor("p", stem=nn.Identity(), blocks=[nn.ReLU()], head=nn.Identity(), layout="map",
                   example_inputs=torch.randn(1, 3, 4, 4))
    assert plain.graph.blocks[0].path == "blocks.0"


def test_count_flops_counts_norms_as_the_papers_do():
    """Norms as fvcore (and the SN-Net papers' DeiT numbers) count them, in FLOPs: 2 per multiply-add.

    Layer and group norm: 5 multiply-adds per element with an affine weight, 4 without; BatchNorm in
    inference 2 (a scale and a shift), in training 5, like the other norms.
    """
    x = torch.randn(2, 8, 4, 4)
    tokens = torch.randn(2, 5, 8)
    cases = [
        (torch.nn.LayerNorm(8), tokens, 5 * tokens.numel()),
        (torch.nn.LayerNorm(8, elementwise_affine=False), tokens, 4 * tokens.numel()),
        (torch.nn.GroupNorm(2, 8), x, 5 * x.numel()),
        (torch.nn.BatchNorm2d(8).eval(), x, 2 * x.numel()),
        (torch.nn.BatchNorm2d(8, affine=False).eval(), x, 1 * x.numel()),
        (torch.nn.BatchNorm2d(8).train(), x, 5 * x.numel()),
    ]
    for module, inputs, macs in cases:
        with torch.no_grad():
            _, flops = count_flops(module, inputs)
        assert flops == 2 * macs, module
    conv = torch.nn.Conv2d(8, 8, 1, bias=False)
    _, flops = count_flops(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(8).eval(), torch.nn.ReLU()), x)
    assert flops == 2 * (x.numel() * 8) + 2 * (2 * x.numel())  # conv + BatchNorm; the ReLU is not counted


def test_count_flops_counts_cpu_fused_attention():
    q = torch.randn(1, 2, 16, 8)
    _, flops = count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert flops == 2 * (2 * 16 * 16 * 8) * 2  # two batched matmuls, 2 FLOPs per multiply-add


def test_context_is_passed_to_stem_blocks_and_head():
    calls = []

    class Stem(nn.Module):
        def forward(self, x, ctx):
            calls.append(("stem", ctx))
            return x * ctx

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, ctx):
            calls.append(("block", ctx))
            return self.lin(x)

    class Head(nn.Module):
        def forward(self, x, ctx):
            calls.append(("head", ctx))
            return x.sum(-1)

    a = Anchor(
        "ctx_anchor",
        stem=Stem(),
        blocks=[Block(), Block()],
        head=Head(),
        prepare=lambda inputs: 2.0,
        layout="sequence",
        example_inputs=torch.ones(1, 3, 4),
    )
    out = a(torch.ones(1, 3, 4))
    assert out.shape == (1, 3)
    assert calls == [("stem", 2.0), ("block", 2.0), ("block", 2.0), ("head", 2.0)]
    assert a.graph.spec_at(2).layout == "sequence"


def test_anchor_validation():
    with pytest.raises(StitchframeError, match="snake_case"):
        Anchor("Bad-Name", stem=nn.Identity(), blocks=[nn.Identity()], head=nn.Identity())
    with pytest.raises(StitchframeError, match="no blocks"):
        Anchor("a", stem=nn.Identity(), blocks=[], head=nn.Identity())
    with pytest.raises(StitchframeError, match="stages"):
        Anchor("a", stem=nn.Identity(), blocks=[nn.Identity()], head=nn.Identity(), stages=[0])
    a = Anchor("a", stem=nn.Identity(), blocks=[nn.Identity()], head=nn.Identity())
    with pytest.raises(StitchframeError, match="example_inputs"):
        a.graph
    b = Anchor("b", stem=nn.Identity(), blocks=[nn.Identity()], head=nn.Identity(), layout="map",
               example_inputs=torch.zeros(1, 5, 3))
    with pytest.raises(StitchframeError, match="position 0"):
        b.graph


def test_cut_mistakes_say_how_to_fix_them():
    """A short stages= or layout list, an unknown layout, a layout that does not fit, an example the stem refuses."""
    model = tiny.tiny_cnn(8)
    parts = {"stem": model.stem, "blocks": list(model.layers), "head": model.head}
    example = torch.randn(1, 3, 16, 16)
    with pytest.raises(StitchframeError, match=r"Anchor 'c': stages has 2 entries, expected 4: the stage of the "
                                               r"stem, then one per block \(3 blocks\); stages=\[0\] \* 4"):
        Anchor("c", **parts, layout="map", stages=[0, 1], example_inputs=example)
    with pytest.raises(StitchframeError, match=r"Anchor 'c': layout has 2 entries, expected 4, one per cut position"):
        Anchor("c", **parts, layout=["map", "map"], example_inputs=example)
    with pytest.raises(StitchframeError, match=r"unknown layout 'maps'; did you mean 'map'\? choose one of tokens"):
        Anchor("c", **parts, layout="maps", example_inputs=example)
    with pytest.raises(StitchframeError, match=r"does not fit layout 'tokens'.*a 4-D activation is layout 'map' "
                                               r"\(\[B, C, H, W\]\) or 'nhwc'.*pass Anchor\(layout=...\)"):
        Anchor("c", **parts, layout="tokens", example_inputs=example).graph
    with pytest.raises(StitchframeError, match=r"running the stem on example_inputs \(shape \(1, 5, 16, 16\)\) "
                                               r"failed: RuntimeError: .*example_inputs must be a batch-1 input"):
        Anchor("c", **parts, layout="map", example_inputs=torch.randn(1, 5, 16, 16)).graph


@pytest.mark.parametrize(
    "ident,name",
    [("deit_tiny_patch16_224", "deit_tiny_patch16_224"), ("org/MiniLM-L6.v2", "minilm_l6_v2"), ("./models/", "models"),
     ("7b", "anchor_7b")],
)
def test_anchor_name(ident, name):
    assert anchor_name(ident) == name


@pytest.mark.gpu
def test_anchor_runs_on_cuda():
    model = tiny.tiny_vit(32).cuda()
    a = tiny.vit_anchor(model, "v")
    a.example_inputs = a.example_inputs.cuda()
    x = tiny.images(2).cuda()
    assert torch.equal(a(x), model(x))
    assert a.graph.flops > 0
