"""Vision transformers: stitched routes by hand, the final-norm option, export, FLOPs."""

from __future__ import annotations

import pytest
import timm
import torch
from _timm_cases import anchor, images, model
from stitchframe_timm.vit import DistilledHead, ViTHead, ViTStem
from torch.utils.flop_counter import FlopCounterMode

import stitchframe

K = 2  # the stitch goes after block K of the front anchor


def by_hand(x, front, end, k, stitch, *, norm=True):
    """front[0:k] -> stitch -> end[k:], written with the timm models' own modules."""
    x = front.patch_embed(x)
    x = front._pos_embed(x)
    x = front.patch_drop(x)
    x = front.norm_pre(x)
    for blk in front.blocks[:k]:
        x = blk(x)
    x = stitch(x)
    for blk in end.blocks[k:]:
        x = blk(x)
    if norm:
        x = end.norm(x)
    return end.forward_head(x)


def _net(timm_regs, final_norm="keep"):
    net = stitchframe.build_snnet(
        [anchor("deit"), anchor("deit_wide")],
        space="snnet",
        layer="linear",
        final_norm=final_norm,
        registries=timm_regs,
    )
    return net.eval()


def _route(net):
    target = (stitchframe.Segment("deit_0", 0, K), stitchframe.Segment("deit_wide_0", K, 4))
    return next(r for r in net.routes if r.segments == target)


@pytest.fixture(scope="module")
def deit_net(timm_regs):
    """Tiny DeiT (width 48) -> tiny DeiT (width 96), snnet space, stitches fitted by least squares."""
    net = _net(timm_regs)
    stitchframe.calibrate(net, [images("deit", 8, seed=3)])
    return net


def test_stitched_route_equals_hand_computation(deit_net):
    route = _route(deit_net)
    x = images("deit")
    with torch.no_grad():
        got = deit_net.forward_route(x, route)
        want = by_hand(x, model("deit"), model("deit_wide"), K, deit_net.stitch_for(route, 0))
    assert (got - want).abs().max() <= 1e-6


def test_final_norm_skip_stitched(timm_regs, deit_net):
    """skip_stitched: stitched routes skip the end anchor's norm (SN-Net v1); anchor routes keep it."""
    skip = _net(timm_regs, final_norm="skip_stitched")
    skip.stitches.load_state_dict(deit_net.stitches.state_dict())
    route = _route(skip)
    x = images("deit")
    front, end, stitch = model("deit"), model("deit_wide"), skip.stitch_for(route, 0)
    with torch.no_grad():
        without = by_hand(x, front, end, K, stitch, norm=False)
        with_norm = by_hand(x, front, end, K, stitch, norm=True)
        assert (skip.forward_route(x, route) - without).abs().max() <= 1e-6
        assert (deit_net.forward_route(x, route) - with_norm).abs().max() <= 1e-6
        assert not torch.allclose(without, with_norm)
        for name in ("deit_0", "deit_wide_0"):
            anchor_route = stitchframe.Route.chain((name, 0, 4))
            m = front if name == "deit_0" else end
            assert torch.equal(skip.forward_route(x, anchor_route), m(x))


def test_final_norm_from_spec(timm_regs):
    """stitch.final_norm in a spec reaches the SN-Net built from timm anchors; the default keeps the norm."""
    tiny = {"img_size": 32, "model_kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}}
    anchors = [
        {"source": "timm:deit_tiny_patch16_224", "name": "t", "options": tiny},
        {
            "source": "timm:deit_small_patch16_224",
            "name": "s",
            "options": {**tiny, "model_kwargs": {**tiny["model_kwargs"], "embed_dim": 96}},
        },
    ]
    default = stitchframe.parse_spec({"anchors": anchors})
    assert default.stitch.final_norm == "keep"
    spec = stitchframe.parse_spec({"anchors": anchors, "stitch": {"final_norm": "skip_stitched", "layer": "linear"}})
    net = stitchframe.assemble(spec, timm_regs).eval()
    assert net.final_norm == "skip_stitched"
    route = next(r for r in net.routes if not r.is_anchor)
    t, s = net.anchors["t"], net.anchors["s"]
    seg0, seg1 = route.segments
    x = images("deit")
    with torch.no_grad():
        h = t.run_blocks(t.run_stem(x), 0, seg0.end)
        h = s.run_blocks(net.stitch_for(route, 0)(h), seg1.start, s.depth)
        assert torch.equal(net.forward_route(x, route), s.run_head(h, norm=False))


def test_export_holds_only_the_route(deit_net):
    route = _route(deit_net)
    exported = deit_net.export(route).eval()
    front, end = deit_net.anchors["deit_0"], deit_net.anchors["deit_wide_0"]
    mods = [front.stem, *front.blocks[:K], deit_net.stitch_for(route, 0), *end.blocks[K:], end.norm, end.head]
    expected = {id(p): p.numel() for m in mods for p in m.parameters()}
    n_params = sum(p.numel() for p in exported.parameters())
    assert n_params == sum(expected.values()) == route.params
    assert n_params < sum(p.numel() for a in (front, end) for p in a.parameters())
    keys = exported.state_dict().keys()
    assert not any(k.startswith(("segments.0.head", "segments.1.stem")) for k in keys)
    x = images("deit")
    with torch.no_grad():
        want = deit_net.forward_route(x, route)
        assert torch.equal(exported(x), want)
    program = torch.export.export(exported, (x,))
    with torch.no_grad():
        assert (program.module()(x) - want).abs().max() <= 1e-6


def test_stem_and_head_hold_model_parts_not_the_model():
    m, a = model("deit_distilled"), anchor("deit_distilled")
    assert isinstance(a.stem, ViTStem) and isinstance(a.head, DistilledHead)
    assert a.stem.dist_token is m.dist_token and a.stem.pos_embed is m.pos_embed
    assert a.head.head_dist is m.head_dist
    held = {id(p) for part in (a.stem, a.head) for p in part.parameters()}
    assert id(m.blocks[0].attn.qkv.weight) not in held
    assert not any(mod is m for part in (a.stem, a.head) for mod in part.modules())


def test_distilled_head_in_training():
    """The distilled head averages its two heads, or returns both when distilled_training is set."""
    m = model("deit_distilled")
    head = DistilledHead(m)
    x = torch.randn(2, 5, m.embed_dim)
    head.train()
    avg = head(x)
    assert torch.allclose(avg, (m.head(x[:, 0]) + m.head_dist(x[:, 1])) / 2)
    head.distilled_training = True
    cls, dist = head(x)
    assert torch.equal(cls, m.head(x[:, 0])) and torch.equal(dist, m.head_dist(x[:, 1]))


def test_avg_pool_vit_has_no_final_norm():
    """global_pool='avg': timm's norm is Identity and fc_norm (after pooling) lives in the head."""
    m, a = model("vit_gap_reg"), anchor("vit_gap_reg")
    assert m.global_pool == "avg" and isinstance(m.norm, torch.nn.Identity)
    assert a.norm is None
    assert isinstance(a.head, ViTHead) and a.head.fc_norm is m.fc_norm


#: The SN-Net papers' "FLOPs" (multiply-adds) of DeiT-Ti/S/B at 224 (Table 1 of arXiv 2302.06586).
PAPER_GMACS = {"deit_tiny_patch16_224": 1.26, "deit_small_patch16_224": 4.61, "deit_base_patch16_224": 17.58}


@pytest.mark.parametrize("name", list(PAPER_GMACS))
def test_deit_macs_are_the_papers(load, name):
    """Random DeiT-Ti/S/B (no download) come out at the papers' 1.26 / 4.61 / 17.58 GMACs, LayerNorms included."""
    assert round(load(f"timm:{name}").graph.macs / 1e9, 2) == PAPER_GMACS[name]


def test_deit_macs_are_torchs_count_plus_fvcores_layer_norms(load):
    """DeiT-Ti: matrix products as torch counts them (eager attention) plus 5 multiply-adds per LayerNorm element."""
    a = load("timm:deit_tiny_patch16_224")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # torch's own counter misses fused CPU attention
    with torch.no_grad(), FlopCounterMode(display=False) as plain:  # torch's own counter: no norms
        model(torch.randn(1, 3, 224, 224))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1
    assert a.graph.macs == plain.get_total_flops() / 2 + sum(5 * 197 * m.normalized_shape[0] for m in norms)


def test_deit_routes_show_macs_beside_flops(load, timm_regs):
    """Route costs in both units: the DeiT-Ti anchor route reads 1.26 GMACs and twice that in GFLOPs."""
    net = stitchframe.build_snnet([load("timm:deit_tiny_patch16_224")], registries=timm_regs)
    (route,) = net.routes
    assert route.macs == route.flops / 2 and round(route.macs / 1e9, 2) == 1.26
    assert net.select_for(max_macs=1.26e9) == route
    with pytest.raises(stitchframe.StitchframeError, match="No route fits"):
        net.select_for(max_macs=1.25e9)


@pytest.mark.gpu
def test_stitched_deit_on_cuda(load, timm_regs):
    """The same SN-Net on CUDA: float32 outputs match the CPU's, bf16 autocast runs."""
    tiny = {"img_size": 32, "model_kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}}
    wide = {**tiny, "model_kwargs": {**tiny["model_kwargs"], "embed_dim": 96}}
    anchors = [load("timm:deit_tiny_patch16_224", **tiny), load("timm:deit_small_patch16_224", **wide)]
    net = stitchframe.build_snnet(anchors, layer="linear", registries=timm_regs).eval()
    x = images("deit", 4)
    with torch.no_grad():
        cpu = [net.forward_route(x, r) for r in net.routes]
        net.cuda()
        for r, want in zip(net.routes, cpu):
            got = net.forward_route(x.cuda(), r)
            assert (got.cpu() - want).abs().max() <= 1e-3
            with torch.autocast("cuda", dtype=torch.bfloat16):
                assert torch.isfinite(net.forward_route(x.cuda(), r)).all()
