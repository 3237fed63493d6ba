from __future__ import annotations

import attrs
import pytest

from stitchframe import NoOptions, PluginError, Registry, UnknownNameError


@attrs.frozen(kw_only=True)
class Opts:
    rank: int = 4


class Thing:
    """A registered thing."""

    Options = Opts


def test_register_and_get_records_origin_and_options():
    reg = Registry("stitch layer")
    reg.register("thing", Thing, plugin="p1", aliases=("alias",))
    entry = reg.get("thing")
    assert entry.obj is Thing
    assert entry.options is Opts
    assert entry.plugin == "p1"
    assert entry.doc == "A registered thing."
    assert reg.get("alias") is entry
    assert reg.origin("alias") == "p1"
    assert reg.names() == ["thing"]
    assert "alias" in reg and "other" not in reg
    assert len(reg) == 1


def test_default_options_when_object_has_none():
    reg = Registry("x")
    reg.register("plain", object, plugin="p")
    assert reg.get("plain").options is NoOptions


def test_duplicate_name_names_both_plugins():
    reg = Registry("stitch layer")
    reg.register("linear", Thing, plugin="first")
    with pytest.raises(PluginError) as exc:
        reg.register("linear", Thing, plugin="second")
    msg = str(exc.value)
    assert "'second'" in msg and "'first'" in msg and "replace=True" in msg
    assert reg.get("linear").plugin == "first"


def test_duplicate_alias_is_refused_too():
    reg = Registry("x")
    reg.register("a", Thing, plugin="p1", aliases=("b",))
    with pytest.raises(PluginError, match="'b'"):
        reg.register("b", Thing, plugin="p2")


def test_replace_overrides_deliberately():
    reg = Registry("x")
    reg.register("a", Thing, plugin="p1", aliases=("old",))
    reg.register("a", object, plugin="p2", replace=True)
    assert reg.get("a").obj is object
    assert reg.get("a").plugin == "p2"
    assert "old" not in reg


@pytest.mark.parametrize("bad", ["Linear", "2d", "with-dash", "", "a b"])
def test_bad_names_are_refused(bad):
    with pytest.raises(PluginError, match="snake_case"):
        Registry("x").register(bad, Thing, plugin="p")


def test_options_must_be_attrs():
    with pytest.raises(PluginError, match="attrs class"):
        Registry("x").register("a", Thing, options=dict, plugin="p")


def test_unknown_name_suggests_close_match_and_lists_names():
    reg = Registry("stitch layer")
    for n in ("linear", "conv1x1", "lowrank"):
        reg.register(n, Thing, plugin="p")
    with pytest.raises(UnknownNameError) as exc:
        reg.get("lowrnak", where="stitch.layer")
    assert str(exc.value) == (
        "Unknown stitch layer 'lowrnak' at stitch.layer; did you mean 'lowrank'? "
        "Registered: conv1x1, linear, lowrank."
    )
    assert isinstance(exc.value, LookupError)
