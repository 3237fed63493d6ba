"""``check_plugin``: what a plugin registers against the contract."""

from __future__ import annotations

import inspect
from typing import Any

import attrs

from ..errors import PluginError
from ..plugins import Registries, get_plugin_manager, load_registries
from ..stitch_layers import StitchLayer
from ..stitch_spaces import StitchSpace
from ..tasks import Task
from ._common import ConformanceError, fail

__all__ = ["check_plugin"]


def check_plugin(plugin: Any, name: str = "plugin_under_test") -> Registries:
    """Register a plugin on a fresh manager and check what it registers.

    Checks that the plugin registers (no misspelled hooks), no hook fails,
    it registers or resolves something, every registered object has an attrs
    ``Options`` class whose fields all carry ``metadata={"help": ...}``,
    stitching layers subclass :class:`~stitchframe.StitchLayer`, stitch spaces
    :class:`~stitchframe.StitchSpace`, tasks :class:`~stitchframe.Task`,
    adapters and datasets are callables, an adapter's loader takes the :class:`~stitchframe.AnchorLoader`
    arguments ``(identifier, options, registries, *, structure_only)``, and
    an adapter's ``check_identifier`` (a lazy reference imported here) is a
    callable too.

    Args:
        plugin: The plugin (module, class or instance with hook implementations).
        name: The name to register it under.

    Returns:
        The registries, with the built-ins and this plugin only.

    Raises:
        ConformanceError: The plugin breaks the contract.
    """
    pm = get_plugin_manager(load_entrypoints=False)
    if pm.is_registered(plugin):
        name = pm.get_name(plugin)
    else:
        try:
            pm.register_plugin(plugin, name=name)
        except PluginError as exc:
            raise ConformanceError(str(exc)) from exc
    regs = load_registries(pm)
    for problem in regs.problems:
        if problem.plugin == name:
            fail(problem.message)
    kinds = {
        "anchor adapter": (regs.anchor_adapters, None),
        "stitch layer": (regs.stitch_layers, StitchLayer),
        "stitch space": (regs.stitch_spaces, StitchSpace),
        "dataset": (regs.datasets, None),
        "task": (regs.tasks, Task),
    }
    count = 0
    for kind, (registry, base) in kinds.items():
        for entry in registry:
            if entry.plugin != name:
                continue
            count += 1
            _check_entry(kind, entry, base)
    resolves = any(impl.plugin_name == name for impl in pm.hook.stitchframe_resolve_anchor.get_hookimpls())
    if count == 0 and not resolves:
        fail(f"Plugin {name!r} registers nothing and resolves no anchors; implement a stitchframe_* hook")
    return regs


def _check_entry(kind: str, entry: Any, base: type | None) -> None:
    where = f"{kind} {entry.name!r} (plugin {entry.plugin!r})"
    if base is not None and not (isinstance(entry.obj, type) and issubclass(entry.obj, base)):
        fail(f"{where} is {entry.obj!r}; it must be a subclass of stitchframe.{base.__name__}")
    if base is None and not callable(entry.obj):
        fail(f"{where} is {entry.obj!r}; it must be callable")
    if kind == "anchor adapter":
        _check_loader_signature(where, entry.obj)
    try:
        entry.check_identifier  # noqa: B018 - imports a lazy reference, which the registry checks is callable
    except PluginError as exc:
        raise ConformanceError(str(exc)) from exc
    for field in attrs.fields(entry.options):
        if not field.metadata.get("help"):
            fail(
                f"{where}: option {field.name!r} of {entry.options.__name__} has no help; "
                'declare it with attrs.field(..., metadata={"help": "..."}) so the docs can list it'
            )


def _check_loader_signature(where: str, load: Any) -> None:
    """The loader accepts ``load(identifier, options, registries, structure_only=...)``, as the engine calls it."""
    try:
        signature = inspect.signature(load)
    except (TypeError, ValueError):  # no signature to read (some builtins): the first load will tell
        return
    try:
        signature.bind("identifier", None, None, structure_only=True)
    except TypeError as exc:
        fail(
            f"{where}: its loader {getattr(load, '__qualname__', load)!r} cannot be called as "
            f"load(identifier, options, registries, structure_only=True) ({exc}); declare it "
            "load(identifier, options, registries=None, *, structure_only=False) (stitchframe.AnchorLoader)"
        )
