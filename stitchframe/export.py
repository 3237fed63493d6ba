"""Exporting one route of a built SN-Net as a standalone model.

``export_route`` writes, for one route:

* ``<name>.safetensors`` - that route's tensors and nothing else
  (:meth:`SNNet.export`: its weights, its own BatchNorm statistics, and the
  buffers ``state_dict`` leaves out), header metadata: route, route id, spec
  hash;
* ``<name>.json`` - the manifest: the route, the source and options that build
  each of its anchors' modules again (``Anchor.structure``), each stitching
  layer's type, activation specs and options, the input preprocessing, class
  names and provenance (the spec it was built from);
* ``<name>.pt2`` - on request, the :func:`torch.export.export` program;
* ``<name>.onnx`` - on request, through :func:`torch.onnx.export` (needs the
  ``onnx`` extra: ``pip install 'stitchframe[onnx]'``).

:func:`load_route` rebuilds the route from the manifest alone: each anchor
through its adapter with ``structure_only=True`` (on the meta device: no
weights read, nothing downloaded), only the route's modules kept, then the
route's tensors loaded into them.  The stitch space, the other anchors and
the build folder are not needed.

A build of a task other than classification exports the same thing, the
SN-Net route: the task's own layers (``task.safetensors``, e.g. the dense
plugin's head) are not part of it, and the manifest says so.  The ``.pt2`` and ``.onnx`` files load with
torch or an ONNX runtime alone.

The export is all or nothing: every requirement (the ``onnx`` extra, a
tensor example input, a recorded structure for every anchor) is checked
before anything is written, the files are written into a hidden temporary
folder beside the destination and moved into place only when all of them
succeeded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
import torch

from .errors import CheckpointError, StitchframeError, UsageError
from .graph import ActivationSpec
from .io import load_module_state, read_json, save_module, write_json
from .pipeline import MANIFEST, build_task, load_snnet
from .plugins import Registries, load_registries
from .routes import Route
from .snnet import RouteModule, SNNet, route_segments
from .spec import AnchorSpec, dump_spec, load_spec, spec_hash, structure_options, unstructure_options

__all__ = ["ExportResult", "export_route", "load_route", "ROUTE_FORMAT"]

#: ``format`` value of a route's manifest.
ROUTE_FORMAT = "stitchframe-route/2"
#: What the manifest of a route exported from a build of a task other than classification says.
TASK_NOTE = ("the SN-Net route only: its output is its end anchor's own head; the task's layers "
             "(task.safetensors, e.g. a dense head) are not exported")


@attrs.frozen(kw_only=True)
class ExportResult:
    """Files written by :func:`export_route`.

    Attributes:
        route_id: The exported route's id.
        weights: The safetensors file.
        description: The JSON manifest.
        onnx: The ONNX file, when requested.
        pt2: The ``torch.export`` program, when requested.
        module: The exported module.
        note: For a build of a task other than classification: what the export leaves out (the task's
            own layers); ``None`` otherwise.
    """

    route_id: int
    weights: Path
    description: Path
    onnx: Path | None
    module: RouteModule
    pt2: Path | None = None
    note: str | None = None


def _pick(snnet: SNNet, route: int | str | None, max_flops: float | None, max_macs: float | None,
          metric: str = "accuracy") -> int:
    budgets = {"--max-flops": max_flops, "--max-macs": max_macs}
    given = {k: v for k, v in budgets.items() if v is not None}
    if (route is None) == (not given) or len(given) > 1:
        raise UsageError("Give exactly one of a route (--route ID) or a budget (--max-flops X or --max-macs X)")
    if route is not None:
        return snnet.routes.index_of(route)
    try:
        chosen = snnet.select_for(max_flops=max_flops, max_macs=max_macs, metric=metric)
    except StitchframeError as exc:  # no route within the budget: the user's to change
        (flag, value), = given.items()
        raise UsageError(f"{flag} {value:.4g}: {exc}; give a larger budget") from None
    return snnet.routes.index_of(chosen)


def _example(snnet: SNNet, route_id: int, batch: int = 2) -> Any:
    first = snnet.anchors[snnet.routes[route_id].segments[0].anchor]
    x = first.example_inputs
    if not isinstance(x, torch.Tensor):
        raise UsageError(
            f"--onnx and --pt2 need a tensor input; anchor {first.name!r} takes {type(x).__name__} inputs "
            "(export without them: the safetensors route loads with stitchframe.load_route)"
        )
    return x.repeat(batch, *([1] * (x.dim() - 1)))


def _check_onnx_extra() -> None:
    """The ``onnx`` extra is installed, or a one-line error says how to install it."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"ONNX export needs {' and '.join(missing)}, which are not installed: pip install 'stitchframe[onnx]' "
            "(or export without --onnx); nothing was written"
        )


def _program(module: RouteModule, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The route traced by :func:`torch.export.export`, with a dynamic batch dimension."""
    try:
        return torch.export.export(module, (example,), dynamic_shapes={"inputs": {0: torch.export.Dim("batch", min=1)}})
    except Exception as exc:  # reported with the route
        raise StitchframeError(f"torch.export of route {module.route} failed: {type(exc).__name__}: {exc}") from exc


def _export_pt2(program: torch.export.ExportedProgram, path: Path) -> Path:
    torch.export.save(program, str(path))
    return path


def _export_onnx(module: RouteModule, program: torch.export.ExportedProgram, path: Path) -> Path:
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    try:
        torch.onnx.export(
            program,  # the program traced once for both files
            input_names=["inputs"],
            output_names=["logits"],
            f=str(path),
            dynamo=True,
            external_data=weight_bytes > 1 << 30,  # one self-contained file below 1 GiB (the protobuf limit is 2)
            verbose=False,
        )
    except Exception as exc:  # reported with the route
        raise StitchframeError(f"ONNX export of route {module.route} failed: {type(exc).__name__}: {exc}") from exc
    return path


def _structure(snnet: SNNet, rid: int) -> dict[str, Any]:
    """What rebuilds route ``rid``'s modules: its anchors' structure sources and its stitching layers.

    Raises:
        UsageError: An anchor records no structure (it was not loaded through an adapter).
    """
    r = snnet.routes[rid]
    anchors = []
    for name in dict.fromkeys(seg.anchor for seg in r.segments):
        structure = snnet.anchors[name].structure
        if structure is None:
            raise UsageError(
                f"anchor {name!r} of route {rid} records no structure (Anchor.structure), so the route cannot be "
                "rebuilt on its own: load anchors with stitchframe.load_anchor (or assemble), or pass "
                "Anchor(structure=(source, options)); nothing was written"
            )
        anchors.append({"name": name, "source": structure[0], "options": dict(structure[1])})
    stitches = []
    for i, link in enumerate(r.links):
        layer = snnet.stitch_for(r, i)
        stitches.append({"layer": link.layer, "src": attrs.asdict(layer.src), "dst": attrs.asdict(layer.dst),
                         "options": unstructure_options(layer.options)})
    return {"anchors": anchors, "stitches": stitches, "final_norm": snnet.uses_norm(r)}


def _source(source: str | Path | SNNet, regs: Registries) -> tuple[SNNet, Path | None, dict[str, Any]]:
    """The SN-Net to export from, the build folder (if any) and what the manifest records of where it came from."""
    if isinstance(source, SNNet):
        return source, None, {"preprocess": None, "classes": None, "spec_hash": None, "spec": None}
    out = Path(source)
    snnet = load_snnet(out, regs)
    spec = load_spec(out / "spec.yaml")
    manifest = read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    classes = (manifest.get("data") or {}).get("classes")
    record = {"preprocess": manifest.get("preprocess"), "classes": classes, "spec_hash": spec_hash(spec),
              "spec": dump_spec(spec)}
    task = build_task(out)
    if task.get("name", "classification") != "classification":
        # the route is the SN-Net's: its output is its end anchor's head, not the task's (a dense head)
        record.update(classes=None, task={"name": task["name"], "metric": task.get("metric"), "exported": False,
                                          "note": TASK_NOTE})
    return snnet, out, record


def export_route(
    source: str | Path | SNNet,
    *,
    route: int | str | None = None,
    max_flops: float | None = None,
    max_macs: float | None = None,
    dest: str | Path | None = None,
    onnx: bool = False,
    pt2: bool = False,
    merge: bool = False,
    registries: Registries | None = None,
) -> ExportResult:
    """Export one route as a standalone model that :func:`load_route` rebuilds alone.

    Args:
        source: A folder written by :func:`stitchframe.pipeline.build`, or an
            :class:`SNNet` whose anchors were loaded through adapters
            (:func:`stitchframe.assemble`, :func:`stitchframe.load_anchor`).
        route: Route id or printed name.
        max_flops: Instead of ``route``: the most accurate route with at most
            this many FLOPs (torch convention, per example); for a build of a
            task other than classification, the best by the task's metric
            (``miou``).
        max_macs: Instead of ``route``: the most accurate route with at most
            this many multiply-adds per example (half the FLOPs; the papers' unit).
        dest: The ``.safetensors`` file to write (default for a build folder:
            ``<source>/exports/route<id>.safetensors``; required for an SN-Net);
            the manifest, ``.pt2`` and ``.onnx`` files go next to it with the
            same stem.
        onnx: Also write ``<stem>.onnx``.
        pt2: Also write ``<stem>.pt2``, the :func:`torch.export.export`
            program (load it with :func:`torch.export.load`).
        merge: Merge stitching layers for inference (``lowrank``).
        registries: The registries (default: all installed plugins).

    A build of a task other than classification (e.g. ``segmentation``)
    exports the SN-Net route alone, as for classification: the task's own
    layers (``task.safetensors``: the dense plugin's projections and head)
    are not exported, and the manifest's ``task`` entry and
    :attr:`ExportResult.note` say so; its ``classes`` is ``null``, since the
    route's output is its end anchor's own head.

    Raises:
        UsageError: No or two route choices, no route within the budget, a
            missing ``onnx`` extra, no ``dest`` for an SN-Net, an anchor with
            no recorded structure.  Nothing is written then.
    """
    if onnx:
        _check_onnx_extra()  # before loading anything: a missing extra must not cost a model load
    if isinstance(source, SNNet) and dest is None:
        raise UsageError("export_route(net, ...) needs dest=, the .safetensors file to write; nothing was written")
    snnet, out, provenance = _source(source, registries if registries is not None else load_registries())
    rid = _pick(snnet, route, max_flops, max_macs, (provenance.get("task") or {}).get("metric") or "accuracy")
    structure = _structure(snnet, rid)
    module = snnet.export(rid, merge=merge).eval()
    example = _example(snnet, rid) if (onnx or pt2) else None
    weights = Path(dest) if dest is not None else out / "exports" / f"route{rid}.safetensors"
    if weights.suffix != ".safetensors":
        weights = weights.with_name(weights.name + ".safetensors")
    if provenance["preprocess"] is None:
        provenance["preprocess"] = attrs.asdict(snnet.anchors[snnet.routes[rid].segments[0].anchor].preprocess)
    weights.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{weights.stem}.export-", dir=weights.parent))
    try:
        staged = _write_export(staging / weights.name, module, snnet.routes[rid], rid,
                               {**structure, **provenance, "merged": merge}, example, onnx=onnx, pt2=pt2)
        _move_into_place(staged, weights.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(route_id=rid, weights=weights, description=weights.with_suffix(".json"),
                        onnx=weights.with_suffix(".onnx") if onnx else None,
                        pt2=weights.with_suffix(".pt2") if pt2 else None, module=module,
                        note=f"task {provenance['task']['name']!r}: {TASK_NOTE}" if "task" in provenance else None)


def _write_export(weights: Path, module: RouteModule, route: Route, rid: int, record: dict[str, Any],
                  example: torch.Tensor | None, *, onnx: bool, pt2: bool) -> list[Path]:
    """Write the export's files (weights, programs on request, the manifest last) into ``weights.parent``."""
    save_module(module, weights, kind="route", non_persistent=True,
                metadata={"route": route.to_dict(), "route_id": rid, "spec_hash": record["spec_hash"],
                          "merged": record["merged"]})
    program = _program(module, example) if (pt2 or onnx) else None
    pt2_path = _export_pt2(program, weights.with_suffix(".pt2")) if pt2 else None
    onnx_path = _export_onnx(module, program, weights.with_suffix(".onnx")) if onnx else None
    description = write_json(weights.with_suffix(".json"), {
        "format": ROUTE_FORMAT,
        "route_id": rid,
        "route": route.to_dict(),
        "weights": weights.name,
        "pt2": pt2_path.name if pt2_path else None,
        "onnx": onnx_path.name if onnx_path else None,
        **record,
    })
    return sorted(p for p in weights.parent.iterdir() if p != description) + [description]


def _move_into_place(files: list[Path], folder: Path) -> list[Path]:
    """Rename every staged file into ``folder`` (the manifest last); undo them all if one fails."""
    moved: list[Path] = []
    try:
        for f in files:
            target = folder / f.name
            os.replace(f, target)
            moved.append(target)
    except BaseException:
        for target in moved:
            target.unlink(missing_ok=True)
        raise
    return moved


def load_route(path: str | Path, registries: Registries | None = None, *,
               device: str | torch.device = "cpu") -> RouteModule:
    """Load a route written by :func:`export_route` from its manifest (or its ``.safetensors``).

    Only the route is built: each of its anchors through its adapter with
    ``structure_only=True`` (the meta device, no weights read or downloaded;
    the adapters the manifest names must be installed), its stitching layers
    from their recorded specs, then only the route's modules are given memory
    and filled from the safetensors file.  Neither the stitch space, the
    other anchors, the build folder nor a network is needed.

    Args:
        path: The ``.json`` manifest or the ``.safetensors`` file beside it.
        registries: The registries (default: all installed plugins).
        device: Where the module's tensors go.

    Returns:
        The :class:`RouteModule`, in eval mode.

    Raises:
        CheckpointError: Missing, malformed or mismatched files.
    """
    desc_path = Path(path).with_suffix(".json")
    desc = read_json(desc_path)
    fmt = desc.get("format") if isinstance(desc, dict) else None
    if fmt != ROUTE_FORMAT:
        hint = ("; it was written by an older stitchframe, which rebuilt the whole SN-Net: export the route again"
                if isinstance(fmt, str) and fmt.startswith("stitchframe-route/") else "")
        raise CheckpointError(f"{str(desc_path)!r} is not a {ROUTE_FORMAT} route manifest (format {fmt!r}){hint}")
    regs = registries if registries is not None else load_registries()
    try:
        route = Route.from_dict(desc["route"])
        module = _route_structure(desc, route, regs, desc_path)
        weights = desc_path.with_name(desc["weights"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StitchframeError):
            raise
        raise CheckpointError(f"{str(desc_path)!r} is malformed ({type(exc).__name__}: {exc}); export the route "
                              "again") from None
    module.to_empty(device=device)
    load_module_state(module, weights, kind="route", non_persistent=True)
    return module.eval()


def _route_structure(desc: dict[str, Any], route: Route, regs: Registries, where: Path) -> RouteModule:
    """The route's modules, built from the manifest through the adapters (meta tensors, no weights)."""
    from .engine import load_anchor

    anchors = {}
    for i, a in enumerate(desc["anchors"]):
        spec = AnchorSpec(source=a["source"], name=a["name"], options=dict(a["options"]))
        anchors[a["name"]] = load_anchor(spec, regs, where=f"{where.name} anchors[{i}]", structure_only=True)
    for seg in route.segments:
        if seg.anchor not in anchors or seg.end > anchors[seg.anchor].depth:
            raise CheckpointError(f"{str(where)!r}: route segment {seg} does not fit the anchors built from the "
                                  "manifest; the adapter builds another model now. Export the route again")
    stitches = []
    with torch.device("meta"):
        for i, st in enumerate(desc["stitches"]):
            entry = regs.stitch_layers.get(st["layer"], where=f"{where.name} stitches[{i}].layer")
            options = structure_options(entry.options, st["options"], f"{where.name} stitches[{i}].options")
            stitches.append(entry.obj(ActivationSpec(**st["src"]), ActivationSpec(**st["dst"]), options))
    return RouteModule(route, route_segments(route, anchors, stitches, norm=bool(desc["final_norm"])))
