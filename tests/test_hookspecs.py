"""One ``test_hook_<name>`` per hook: a plugin defined here, registered on a fresh manager,
and the engine using what it registers.

The plugins between ``--8<--`` markers are the examples of docs/reference/hooks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import safetensors.torch
import torch
from torch import nn

import stitchframe
from stitchframe.spec import AnchorSpec
from stitchframe.testing import check_anchor, check_stitch_layer, check_stitch_space
from tests import tiny


# --8<-- [start:register_anchor_adapters]
@attrs.frozen(kw_only=True)
class MLPOptions:
    """Options of the ``mlp`` adapter."""

    depth: int = attrs.field(default=3, validator=attrs.validators.ge(1), metadata={"help": "Number of blocks."})
    seed: int = attrs.field(default=0, metadata={"help": "Seed of the random weights."})


def build_mlp(width: int, depth: int) -> nn.Sequential:
    """Input projection, ``depth`` blocks, classifier; works on sequences ``[B, L, 8]``."""
    blocks = [nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)]
    return nn.Sequential(nn.Linear(8, width), *blocks, nn.Linear(width, 10))


def mlp_anchor(model: nn.Sequential, name: str) -> stitchframe.Anchor:
    """Cut the MLP: first layer is the stem, last the head, the rest are blocks."""
    return stitchframe.Anchor(
        name,
        stem=model[0],
        blocks=list(model[1:-1]),
        head=model[-1],
        layout="sequence",
        variable_length=True,  # any sequence length works
        example_inputs=torch.randn(1, 5, 8),
        model=model,
        preprocess=stitchframe.Preprocess(modality="other", input_size=None),
    )


def load_mlp(identifier: str, options: MLPOptions, registries=None, *, structure_only=False) -> stitchframe.Anchor:
    """``mlp:<width>``, e.g. ``mlp:64`` (seeded random weights: nothing to skip when ``structure_only``)."""
    torch.manual_seed(options.seed)
    width = int(identifier)
    return mlp_anchor(build_mlp(width, options.depth), f"mlp{width}")


class MLPPlugin:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_anchor_adapters(register):
        register("mlp", load_mlp, options=MLPOptions)
# --8<-- [end:register_anchor_adapters]


def test_hook_stitchframe_register_anchor_adapters(pm):
    pm.register_plugin(MLPPlugin, name="mlp_plugin")
    regs = stitchframe.load_registries(pm)
    assert regs.anchor_adapters.origin("mlp") == "mlp_plugin"
    anchor = stitchframe.load_anchor(AnchorSpec(source="mlp:16", options={"depth": 2, "seed": 3}), regs)
    assert (anchor.name, anchor.depth, anchor.source) == ("mlp16", 2, "mlp:16")
    assert anchor.graph.spec_at(1) == stitchframe.ActivationSpec(layout="sequence", channels=16)
    check_anchor(anchor, inputs=torch.randn(2, 7, 8))
    with pytest.raises(stitchframe.SpecError, match=r"anchors\[0\]\.options.*depth"):
        stitchframe.load_anchor(AnchorSpec(source="mlp:16", options={"depth": 0}), regs)


# --8<-- [start:register_stitch_layers]
@attrs.frozen(kw_only=True)
class DropoutLinearOptions(stitchframe.LinearStitch.Options):
    """Options of the ``dropout_linear`` stitch: those of ``linear`` plus ``p``."""

    p: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.lt(1)],
        metadata={"help": "Dropout probability on the stitch's input while training."},
    )


class DropoutLinearStitch(stitchframe.LinearStitch):
    """A linear stitch with dropout on its input while training."""

    Options = DropoutLinearOptions

    def __init__(self, src, dst, options=None):
        super().__init__(src, dst, options)
        self.dropout = nn.Dropout(self.options.p)

    def forward(self, x):
        return super().forward(self.dropout(x))


class DropoutStitchPlugin:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_layers(register):
        register("dropout_linear", DropoutLinearStitch)
# --8<-- [end:register_stitch_layers]


def test_hook_stitchframe_register_stitch_layers(pm, vit_family):
    pm.register_plugin(DropoutStitchPlugin, name="dropout")
    regs = stitchframe.load_registries(pm)
    assert regs.stitch_layers.origin("dropout_linear") == "dropout"
    net = stitchframe.build_snnet(vit_family, layer="dropout_linear", layer_options={"p": 0.25}, registries=regs)
    assert net.stitches and all(type(s) is DropoutLinearStitch for s in net.stitches.values())
    assert {s.dropout.p for s in net.stitches.values()} == {0.25}
    assert all(link.layer == "dropout_linear" for r in net.routes for link in r.links)
    check_stitch_layer(DropoutLinearStitch, vit_family[0].graph.spec_at(2), vit_family[1].graph.spec_at(2))
    with pytest.raises(stitchframe.SpecError, match=r"stitch\.layer_options.*p"):
        stitchframe.build_snnet(vit_family, layer="dropout_linear", layer_options={"p": 1.5}, registries=regs)


# --8<-- [start:register_stitch_spaces]
class HalfwaySpace(stitchframe.StitchSpace):
    """Each anchor alone, plus every ordered pair of anchors joined halfway."""

    def routes(self, anchors, can_stitch, context=None):
        for a in anchors:
            yield stitchframe.Route.chain((a.name, 0, a.depth))
        for a in anchors:
            for b in anchors:
                p, q = a.depth // 2, b.depth // 2
                if a is not b and can_stitch(a.name, p, b.name, q):
                    yield stitchframe.Route.chain((a.name, 0, p), (b.name, q, b.depth))


class HalfwayPlugin:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_stitch_spaces(register):
        register("halfway", HalfwaySpace)
# --8<-- [end:register_stitch_spaces]


def test_hook_stitchframe_register_stitch_spaces(pm, vit_family):
    pm.register_plugin(HalfwayPlugin, name="halfway_plugin")
    regs = stitchframe.load_registries(pm)
    assert regs.stitch_spaces.origin("halfway") == "halfway_plugin"
    net = stitchframe.build_snnet(vit_family, space="halfway", registries=regs)
    assert len(net.routes) == 3 + 3 * 2
    assert str(net.routes[3]) == "vit32[0:2] -> linear -> vit48[2:4]"
    check_stitch_space(HalfwaySpace, vit_family)


# --8<-- [start:register_datasets]
@attrs.frozen(kw_only=True)
class NoiseOptions:
    """Options of the ``noise`` dataset."""

    size: int = attrs.field(default=256, validator=attrs.validators.ge(1), metadata={"help": "Training examples."})
    classes: int = attrs.field(default=10, validator=attrs.validators.ge(2), metadata={"help": "Number of classes."})
    seed: int = attrs.field(default=0, metadata={"help": "Seed of the images and labels."})


def load_noise(options: NoiseOptions, preprocess: stitchframe.Preprocess) -> stitchframe.DatasetSplits:
    """Random images of the size the anchors agree on, with random labels."""
    g = torch.Generator().manual_seed(options.seed)

    def split(n: int) -> torch.utils.data.Dataset:
        images = torch.randn(n, *preprocess.input_size, generator=g)  # (C, H, W), data.img_size applied
        labels = torch.randint(options.classes, (n,), generator=g)
        return torch.utils.data.TensorDataset(images, labels)  # items are (inputs, target) pairs

    return stitchframe.DatasetSplits(
        train=split(options.size),
        val=split(max(1, options.size // 4)),
        num_classes=options.classes,  # the anchors' heads must output this many logits
        classes=[f"class_{i}" for i in range(options.classes)],
        description=f"noise: {options.size} train images of {preprocess.input_size}",
    )


class NoisePlugin:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_datasets(register):
        register("noise", load_noise, options=NoiseOptions)
# --8<-- [end:register_datasets]


def test_hook_stitchframe_register_datasets(pm, tmp_path):
    pm.register_plugin(NoisePlugin, name="noise_plugin")
    pm.register_plugin(MLPPlugin, name="mlp_plugin")
    pm.register_plugin(tiny.TinyPlugin, name="tiny")
    regs = stitchframe.load_registries(pm)
    assert regs.datasets.origin("noise") == "noise_plugin"
    spec = {"anchors": ["mlp:8"], "data": {"name": "noise", "options": {"size": 32}}}
    assert stitchframe.validate_spec(stitchframe.parse_spec(spec), regs) == []
    spec["data"]["options"] = {"size": 32, "clases": 3}
    message = r"data\.options: unknown key\(s\) 'clases'; did you mean 'classes'"
    with pytest.raises(stitchframe.SpecError, match=message):
        stitchframe.validate_spec(stitchframe.parse_spec(spec), regs)
    # the build loads it through the registry, calibrates on its training split and evaluates on its val split
    spec = {"anchors": ["tiny:vit32", "tiny:vit48"], "calibration": {"batches": 1},
            "data": {"name": "noise", "options": {"size": 32}}, "train": {"epochs": 0}, "eval": {"batch_size": 4}}
    result = stitchframe.build(stitchframe.parse_spec(spec), output=tmp_path / "out", registries=regs)
    assert result.data.startswith("noise: 32 train images of (3, ")
    assert {r.samples for r in result.evaluation.routes} == {8}


# --8<-- [start:resolve_anchor]
class LocalMLPPlugin:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_resolve_anchor(source, options):
        """Claim sources that are safetensors files of an MLP (no prefix needed)."""
        path = Path(source)
        if path.suffix != ".safetensors" or not path.is_file():
            return None  # not ours: let other plugins try
        state = safetensors.torch.load_file(path)
        width = state["0.weight"].shape[0]
        depth = sum(key.endswith(".0.weight") for key in state)
        model = build_mlp(width, depth)
        model.load_state_dict(state)
        return mlp_anchor(model, options.get("name", path.stem))
# --8<-- [end:resolve_anchor]


def test_hook_stitchframe_resolve_anchor(pm, tmp_path):
    pm.register_plugin(LocalMLPPlugin, name="local_mlp")
    regs = stitchframe.load_registries(pm)
    torch.manual_seed(1)
    model = build_mlp(12, 2).eval()
    path = tmp_path / "mlp12.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    anchor = stitchframe.load_anchor(str(path), regs)
    assert (anchor.name, anchor.depth, anchor.source) == ("mlp12", 2, str(path))
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(anchor.eval()(x), model(x))
    check_anchor(anchor)
    message = r"Anchor source '.*model\.onnx' at anchors\[0\] has no 'prefix:'"
    with pytest.raises(stitchframe.UnknownNameError, match=message):
        stitchframe.load_anchor(str(tmp_path / "model.onnx"), regs)


# --8<-- [start:register_tasks]
@attrs.frozen(kw_only=True)
class TopKOptions:
    """Options of the ``top_k`` task."""

    k: int = attrs.field(default=2, validator=attrs.validators.ge(1), metadata={"help": "How many guesses count."})


class TopKTask(stitchframe.ClassificationTask):
    """Classification whose routes are ranked by top-k accuracy (the anchors' heads, no layers of its own)."""

    Options = TopKOptions
    metric = "top_k"
    metric_label = "top-k %"

    def batch_stats(self, output, target):
        correct, loss, n = super().batch_stats(output, target)  # sums: batches add up
        guesses = output.topk(self.options.k, dim=-1).indices
        return [correct, loss, n, float((guesses == target[:, None]).any(-1).sum())]

    def metrics(self, stats):
        return {**super().metrics(stats[:3]), "top_k": 100.0 * stats[3] / stats[2]}


class TopKPlugin:
    @staticmethod
    @stitchframe.hookimpl
    def stitchframe_register_tasks(register):
        register("top_k", TopKTask)
# --8<-- [end:register_tasks]


def test_hook_stitchframe_register_tasks(pm, tmp_path):
    pm.register_plugin(TopKPlugin, name="topk_plugin")
    pm.register_plugin(tiny.TinyPlugin, name="tiny")
    regs = stitchframe.load_registries(pm)
    assert regs.tasks.origin("top_k") == "topk_plugin" and regs.tasks.origin("classification") == "stitchframe.tasks"
    spec = {"anchors": ["tiny:vit32", "tiny:vit48"], "calibration": {"batches": 1, "augment": 0},
            "data": {"name": "synthetic", "options": {"train_size": 32, "val_size": 24}},
            "task": {"name": "top_k", "options": {"k": 3}}, "train": {"max_steps": 2, "batch_size": 8},
            "eval": {"batch_size": 16}}
    parsed = stitchframe.parse_spec(spec)
    assert stitchframe.validate_spec(parsed, regs) == []
    result = stitchframe.build(parsed, output=tmp_path / "out", registries=regs)
    assert result.model is result.snnet and result.train_result["steps"] == 2  # no layers of its own
    # the generic evaluator's accuracy and loss are the shared-prefix evaluator's; top-3 counts more guesses
    preprocess, _ = stitchframe.datasets.agreed_preprocess(list(result.snnet.anchors.values()))
    val = stitchframe.datasets.load_data(parsed, regs, preprocess).val
    again = stitchframe.evaluate_routes(result.snnet, val, batch_size=16, record=False)
    for r, ref in zip(result.evaluation.routes, again.routes):
        assert r.accuracy == pytest.approx(ref.accuracy) and r.loss == pytest.approx(ref.loss, rel=1e-5)
        assert ref.accuracy <= r.metrics["top_k"] <= 100.0 and result.snnet.routes[r.id].meta["top_k"] == r.metrics["top_k"]
    report = json.loads((tmp_path / "out" / "routes.json").read_text())
    assert report["metric"] == "top_k" and "top-k %" in (tmp_path / "out" / "routes.md").read_text()
    with pytest.raises(stitchframe.SpecError, match=r"task\.options: unknown key\(s\) 'kk'; did you mean 'k'"):
        stitchframe.validate_spec(stitchframe.parse_spec({**spec, "task": {"name": "top_k", "options": {"kk": 2}}}), regs)
    with pytest.raises(stitchframe.UnknownNameError, match=r"task.*'top_j'.*did you mean 'top_k'"):
        stitchframe.validate_spec(stitchframe.parse_spec({**spec, "task": {"name": "top_j"}}), regs)
