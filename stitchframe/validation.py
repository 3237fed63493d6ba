"""Checking a spec against the registries without loading any model (``stitchframe validate``).

This module imports no torch: plugins register lazy references and torch-free
options classes, so validating a spec costs the time to read it and to load
the plugins' registrations.
"""

from __future__ import annotations

from .plugins import Registries, load_registries, unknown_source_error
from .registry import Entry
from .spec import Spec, structure_options

__all__ = ["validate_spec", "AUTO_LAYER"]

#: The layer name that picks ``conv1x1`` between feature maps and ``linear`` otherwise.
AUTO_LAYER = "auto"


def _registries(registries: Registries | None) -> Registries:
    return registries if registries is not None else load_registries()


def _adapter_for(source: str, regs: Registries) -> tuple[Entry | None, str]:
    if ":" in source:
        prefix, ident = source.split(":", 1)
        if prefix in regs.anchor_adapters:
            return regs.anchor_adapters.get(prefix), ident
    return None, source


def validate_spec(spec: Spec, registries: Registries | None = None) -> list[str]:
    """Check names and plugin options of a spec without loading any model.

    Returns:
        Notes (warnings) about the spec; errors raise.

    Raises:
        SpecError, UnknownNameError: The first problem, with its spec path.
    """
    regs = _registries(registries)
    notes: list[str] = []
    for i, a in enumerate(spec.anchors):
        entry, _ = _adapter_for(a.source, regs)
        if entry is None:
            if regs.pm is None or not regs.pm.hook.stitchframe_resolve_anchor.get_hookimpls():
                raise unknown_source_error(a.source, regs, f"anchors[{i}].source")
            notes.append(f"anchors[{i}]: {a.source!r} is left to the stitchframe_resolve_anchor hook")
        else:
            structure_options(entry.options, a.options, f"anchors[{i}].options")
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
    return notes
