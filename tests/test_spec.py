from __future__ import annotations

import attrs
import pytest
import yaml

from stitchframe import Spec, SpecError, dump_spec, load_spec, parse_spec
from stitchframe.spec import AnchorSpec, spec_hash, structure_options


def test_minimal_spec_with_string_anchors():
    spec = parse_spec({"anchors": ["timm:deit_tiny_patch16_224", {"source": "timm:deit_small_patch16_224", "name": "s"}]})
    assert spec.anchors[0] == AnchorSpec(source="timm:deit_tiny_patch16_224")
    assert spec.anchors[1].name == "s"
    assert spec.stitch.space == "snnet" and spec.stitch.layer == "auto"


def test_round_trip_through_yaml(tmp_path):
    spec = parse_spec(
        {
            "anchors": [{"source": "tiny:vit32", "options": {"seed": 3}}, "tiny:vit48"],
            "stitch": {"space": "snnet2", "space_options": {"stride": 2}, "layer": "lowrank", "layer_options": {"rank": 4}},
            "data": {"name": "synthetic", "options": {"n": 10}},
            "train": {"epochs": 0.5, "freeze": ["stems"]},
            "output": "runs/x",
        }
    )
    path = tmp_path / "spec.yaml"
    path.write_text(dump_spec(spec))
    assert load_spec(path) == spec
    assert spec_hash(spec) == spec_hash(load_spec(path))
    assert spec_hash(spec) != spec_hash(attrs.evolve(spec, seed=1))


@pytest.mark.parametrize(
    "data,message",
    [
        ({}, "anchors: required key is missing"),
        ({"anchors": []}, "anchors: Length of 'anchors' must be >= 1"),
        ({"anchors": [3]}, "anchors[0]: expected a 'prefix:identifier' string or a mapping, got int"),
        ({"anchors": [{"sourc": "x"}]}, "anchors[0].source: required key is missing"),
        ({"anchors": ["a"], "stitch": {"layerr": "x"}}, "stitch: unknown key(s) 'layerr'; did you mean 'layer'?"),
        ({"anchors": ["a"], "train": {"lr": -1}}, "train.lr: 'lr' must be > 0"),
        ({"anchors": ["a"], "train": {"batch_size": "big"}}, "train.batch_size: expected an integer, got str 'big'"),
        ({"anchors": ["a"], "train": {"sampling": "random"}}, "train.sampling: must be one of 'uniform', 'cyclic', 'flops_grouped'"),
        ({"anchors": ["a"], "stitch": {"final_norm": "x"}}, "stitch.final_norm: must be one of 'keep', 'skip_stitched'"),
        ({"anchors": [{"source": "a", "name": "A!"}]}, "anchors[0].name"),
        ({"anchors": [{"source": "t:a", "name": "x"}, {"source": "t:b", "name": "x"}]}, "names ['x'] are used twice"),
        ({"anchors": ["a"], "data": {}}, "data.name: required key is missing"),
        ({"anchors": ["a"], "bogus": 1}, "unknown key(s) 'bogus'"),
        (["a"], "the spec must be a mapping"),
    ],
)
def test_errors_name_the_spec_path(data, message):
    with pytest.raises(SpecError) as exc:
        parse_spec(data, source="s.yaml")
    text = str(exc.value)
    assert text.startswith("s.yaml: ")
    assert message in text
    assert "\n" not in text


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("anchors: [a\nstitch: {")
    with pytest.raises(SpecError, match=r"bad.yaml: line \d+, column \d+: not valid YAML"):
        load_spec(bad)


@attrs.frozen(kw_only=True)
class PluginOpts:
    rank: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    mode: str = "a"


def test_plugin_options_are_validated_like_core_options():
    assert structure_options(PluginOpts, {"rank": 2}, "stitch.layer_options") == PluginOpts(rank=2)
    assert structure_options(PluginOpts, None, "x") == PluginOpts()
    with pytest.raises(SpecError, match=r"^stitch.layer_options.rank: 'rank' must be >= 1"):
        structure_options(PluginOpts, {"rank": 0}, "stitch.layer_options")
    with pytest.raises(SpecError, match=r"^stitch.layer_options: unknown key\(s\) 'rnak'; did you mean 'rank'\?"):
        structure_options(PluginOpts, {"rnak": 3}, "stitch.layer_options")
    with pytest.raises(SpecError, match="expected a mapping"):
        structure_options(PluginOpts, [1], "stitch.layer_options")


def test_every_spec_field_has_help():
    def walk(cls):
        for f in attrs.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            for t in (f.type,):
                if isinstance(t, type) and attrs.has(t):
                    walk(t)

    walk(Spec)
    from stitchframe.spec import CalibrationSpec, DataSpec, EvalSpec, StitchSpec, TrainSpec

    for cls in (AnchorSpec, StitchSpec, CalibrationSpec, DataSpec, TrainSpec, EvalSpec):
        walk(cls)


def test_dump_is_plain_yaml():
    spec = parse_spec({"anchors": ["a:b"]})
    assert yaml.safe_load(dump_spec(spec))["anchors"] == [{"source": "a:b", "name": None, "options": {}}]


@pytest.mark.parametrize("value,what", [("1e400", "not a finite number"), ("1.0e+400", "not a finite number"),
                                        (".inf", "not a finite number"), ("1e300", "out of range")])
def test_numbers_in_a_spec_are_finite_and_sane(tmp_path, value, what):
    from stitchframe.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(f"anchors: [tiny:a]\ntrain: {{epochs: {value}}}\n")
    with pytest.raises(SpecError, match=rf"s.yaml: train.epochs: .* {what}"):
        load_spec(path)


def test_plugin_options_numbers_are_checked_too():
    import attrs

    from stitchframe.spec import structure_options

    @attrs.frozen(kw_only=True)
    class Opts:
        scale: float = 1.0

    with pytest.raises(SpecError, match=r"anchors\[0\].options.scale: inf is not a finite number"):
        structure_options(Opts, {"scale": float("inf")}, "anchors[0].options")
