"""Checking a spec against the registries without loading any model (``stitchframe validate``).

This module imports no torch: plugins register lazy references and torch-free
options classes, so validating a spec costs the time to read it and to load
the plugins' registrations.  Anchor identifiers are checked by the adapter's
``check_identifier`` (:class:`stitchframe.IdentifierCheck`), when it
registered one: a name list or a file lookup, no model is built.
"""

from __future__ import annotations

from .errors import plugin_call
from .plugins import Registries, load_registries, prefix_provider, unknown_source_error
from .registry import Entry
from .spec import AnchorSpec, Spec, structure_options

__all__ = ["validate_spec", "recipe_notes", "AUTO_LAYER"]

#: The layer name that picks ``conv1x1`` between feature maps and ``linear`` otherwise.
AUTO_LAYER = "auto"


def registries_or_default(registries: Registries | None) -> Registries:
    """``registries``, or those of every installed plugin when it is ``None``."""
    return registries if registries is not None else load_registries()


def adapter_for(source: str, regs: Registries) -> tuple[Entry | None, str]:
    """The adapter entry whose prefix ``source`` names and the identifier after it (``None``: no such prefix)."""
    if ":" in source:
        prefix, ident = source.split(":", 1)
        if prefix in regs.anchor_adapters:
            return regs.anchor_adapters.get(prefix), ident
    return None, source


def check_anchor_identifier(entry: Entry, anchor: AnchorSpec, where: str) -> None:
    """Structure an anchor's options and run its adapter's identifier check (if any) on its source.

    Raises:
        SpecError, UnknownNameError: Bad options or an identifier the adapter
            says cannot load, with ``where`` and the source in the message.
        PluginError: The check itself failed (a bug in the plugin).
    """
    options = structure_options(entry.options, anchor.options, f"{where}.options")
    check = entry.check_identifier
    if check is None:
        return
    identifier = anchor.source.split(":", 1)[1]
    with plugin_call(f"{where} ({anchor.source!r})", (where,),
                     f"Plugin {entry.plugin!r} failed to check anchor source {anchor.source!r} at {where}"):
        check(identifier, options)


def validate_spec(spec: Spec, registries: Registries | None = None) -> list[str]:
    """Check names and plugin options of a spec without loading any model.

    Returns:
        Notes (warnings) about the spec; errors raise.

    Raises:
        SpecError, UnknownNameError: The first problem, with its spec path.
    """
    regs = registries_or_default(registries)
    notes: list[str] = []
    for i, a in enumerate(spec.anchors):
        entry, _ = adapter_for(a.source, regs)
        if entry is None:
            if regs.pm is None or not regs.pm.hook.stitchframe_resolve_anchor.get_hookimpls():
                raise unknown_source_error(a.source, regs, f"anchors[{i}].source")
            prefix = a.source.split(":", 1)[0] if ":" in a.source else None
            notes.append(f"anchors[{i}]: {a.source!r} is left to the stitchframe_resolve_anchor hook "
                         f"(no installed plugin registers its prefix).{prefix_provider(prefix)}")
        else:
            check_anchor_identifier(entry, a, f"anchors[{i}]")
    space = regs.stitch_spaces.get(spec.stitch.space, where="stitch.space")
    structure_options(space.options, spec.stitch.space_options, "stitch.space_options")
    if spec.stitch.layer != AUTO_LAYER:
        entry = regs.stitch_layers.get(spec.stitch.layer, where="stitch.layer")
        structure_options(entry.options, spec.stitch.layer_options, "stitch.layer_options")
    else:
        for name in ("linear", "conv1x1"):
            if name in regs.stitch_layers:
                structure_options(regs.stitch_layers.get(name).options, spec.stitch.layer_options, "stitch.layer_options")
    if spec.data is not None:
        entry = regs.datasets.get(spec.data.name, where="data.name")
        structure_options(entry.options, spec.data.options, "data.options")
    entry = regs.tasks.get(spec.task.name, where="task.name")
    structure_options(entry.options, spec.task.options, "task.options")
    return notes + recipe_notes(spec)


def recipe_notes(spec: Spec) -> list[str]:
    """Warnings about training settings that work against each other (printed by ``validate`` and ``build``)."""
    notes = []
    if spec.train.route_bn_batches and "batchnorm" in spec.train.freeze:
        notes.append(
            "train.route_bn_batches with batchnorm in train.freeze: the routes train with the anchors' frozen "
            "BatchNorm statistics, and statistics re-estimated after training replace them in every layer after "
            "a stitch (measured: stitched routes lose up to 70 points, docs/how-to/keep-the-anchors.md); set "
            "route_bn_batches: 0, or train BatchNorm (remove batchnorm from train.freeze)")
    if spec.calibration.refit and (spec.calibration.batches == 0 or spec.train.epochs == 0
                                   or spec.train.max_steps == 0):
        notes.append(
            "calibration.refit with no calibration batches or no training: there is nothing to fit again after "
            "training; set calibration.refit: false, or give calibration.batches and train steps")
    return notes
