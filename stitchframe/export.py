"""Exporting one route of a built SN-Net as a standalone model.

``export_route`` writes, for one route:

* ``<name>.safetensors`` - only that route's weights (:meth:`SNNet.export`),
  header metadata: route, route id, spec hash;
* ``<name>.json`` - what the route is: route, id, FLOPs, params, recorded
  metrics, the input preprocessing, class names and the spec it was built
  from (so :func:`load_route` can rebuild the module without the build
  folder);
* ``<name>.onnx`` - on request, through :func:`torch.onnx.export` (needs the
  ``onnx`` extra: ``pip install 'stitchframe[onnx]'``).

The export is all or nothing: every requirement (the ``onnx`` extra, a
tensor example input) is checked before anything is written, the files are
written into a hidden temporary folder beside the destination and moved into
place only when all of them succeeded.
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
from .io import load_module_state, read_json, save_module, write_json
from .pipeline import MANIFEST, load_snnet
from .plugins import Registries, load_registries
from .snnet import RouteModule, SNNet
from .spec import dump_spec, load_spec, parse_spec, spec_hash

__all__ = ["ExportResult", "export_route", "load_route", "ROUTE_FORMAT"]

#: ``format`` value of a route's JSON description.
ROUTE_FORMAT = "stitchframe-route/1"


@attrs.frozen(kw_only=True)
class ExportResult:
    """Files written by :func:`export_route`.

    Attributes:
        route_id: The exported route's id.
        weights: The safetensors file.
        description: The JSON file.
        onnx: The ONNX file, when requested.
        module: The exported module.
    """

    route_id: int
    weights: Path
    description: Path
    onnx: Path | None
    module: RouteModule


def _pick(snnet: SNNet, route: int | str | None, max_flops: float | None, max_macs: float | None) -> int:
    budgets = {"--max-flops": max_flops, "--max-macs": max_macs}
    given = {k: v for k, v in budgets.items() if v is not None}
    if (route is None) == (not given) or len(given) > 1:
        raise UsageError("Give exactly one of a route (--route ID) or a budget (--max-flops X or --max-macs X)")
    if route is not None:
        return snnet.routes.index_of(route)
    try:
        chosen = snnet.select_for(max_flops=max_flops, max_macs=max_macs)
    except StitchframeError as exc:  # no route within the budget: the user's to change
        (flag, value), = given.items()
        raise UsageError(f"{flag} {value:.4g}: {exc}; give a larger budget") from None
    return snnet.routes.index_of(chosen)


def _example(snnet: SNNet, route_id: int, batch: int = 2) -> Any:
    first = snnet.anchors[snnet.routes[route_id].segments[0].anchor]
    x = first.example_inputs
    if not isinstance(x, torch.Tensor):
        raise StitchframeError(
            f"ONNX export needs a tensor input; anchor {first.name!r} takes {type(x).__name__} inputs"
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


def _export_onnx(module: RouteModule, example: torch.Tensor, path: Path) -> Path:
    module.eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    try:
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["inputs"],
            output_names=["logits"],
            dynamic_shapes={"inputs": {0: torch.export.Dim("batch", min=1)}},
            dynamo=True,
            external_data=weight_bytes > 1 << 30,  # one self-contained file below 1 GiB (the protobuf limit is 2)
            verbose=False,
        )
    except Exception as exc:  # reported with the route
        raise StitchframeError(f"ONNX export of route {module.route} failed: {type(exc).__name__}: {exc}") from exc
    return path


def export_route(
    output_dir: str | Path,
    *,
    route: int | str | None = None,
    max_flops: float | None = None,
    max_macs: float | None = None,
    dest: str | Path | None = None,
    onnx: bool = False,
    merge: bool = False,
    registries: Registries | None = None,
) -> ExportResult:
    """Export one route of a build output as a standalone model.

    Args:
        output_dir: A folder written by :func:`stitchframe.pipeline.build`.
        route: Route id or printed name.
        max_flops: Instead of ``route``: the most accurate route with at most
            this many FLOPs (torch convention, per example).
        max_macs: Instead of ``route``: the most accurate route with at most
            this many multiply-adds per example (half the FLOPs; the papers' unit).
        dest: The ``.safetensors`` file to write (default:
            ``<output_dir>/exports/route<id>.safetensors``); the JSON and ONNX
            files go next to it with the same stem.
        onnx: Also write ``<stem>.onnx``.
        merge: Merge stitching layers for inference (``lowrank``).
        registries: The registries (default: all installed plugins).
    """
    if onnx:
        _check_onnx_extra()  # before loading anything: a missing extra must not cost a model load
    regs = registries if registries is not None else load_registries()
    out = Path(output_dir)
    snnet = load_snnet(out, regs)
    rid = _pick(snnet, route, max_flops, max_macs)
    module = snnet.export(rid, merge=merge).eval()
    example = _example(snnet, rid) if onnx else None
    weights = Path(dest) if dest is not None else out / "exports" / f"route{rid}.safetensors"
    if weights.suffix != ".safetensors":
        weights = weights.with_name(weights.name + ".safetensors")
    spec = load_spec(out / "spec.yaml")
    manifest = read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    weights.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{weights.stem}.export-", dir=weights.parent))
    try:
        staged = _write_export(staging / weights.name, module, snnet, rid, spec, manifest, merge, example)
        _move_into_place(staged, weights.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(route_id=rid, weights=weights, description=weights.with_suffix(".json"),
                        onnx=weights.with_suffix(".onnx") if onnx else None, module=module)


def _write_export(weights: Path, module: RouteModule, snnet: SNNet, rid: int, spec: Any, manifest: dict[str, Any],
                  merge: bool, example: torch.Tensor | None) -> list[Path]:
    """Write the export's files (weights, ONNX on request, JSON last) into ``weights.parent``; return them."""
    spec_h = spec_hash(spec)
    r = snnet.routes[rid]
    save_module(module, weights, kind="route",
                metadata={"route": r.to_dict(), "route_id": rid, "spec_hash": spec_h, "merged": merge})
    onnx_path = _export_onnx(module, example, weights.with_suffix(".onnx")) if example is not None else None
    description = write_json(weights.with_suffix(".json"), {
        "format": ROUTE_FORMAT,
        "route_id": rid,
        "route": r.to_dict(),
        "merged": merge,
        "weights": weights.name,
        "onnx": onnx_path.name if onnx_path else None,
        "preprocess": manifest.get("preprocess"),
        "classes": (manifest.get("data") or {}).get("classes"),
        "spec_hash": spec_h,
        "spec": dump_spec(spec),
    })
    return sorted(p for p in weights.parent.iterdir() if p != description) + [description]


def _move_into_place(files: list[Path], folder: Path) -> list[Path]:
    """Rename every staged file into ``folder`` (the JSON description last); undo them all if one fails."""
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


def load_route(path: str | Path, registries: Registries | None = None) -> RouteModule:
    """Load a route written by :func:`export_route` from its JSON description (or its ``.safetensors``).

    The architecture is rebuilt from the spec recorded in the JSON (so the
    adapters it names must be installed); the weights come from the
    safetensors file.

    Raises:
        CheckpointError: Missing or mismatched files.
    """
    path = Path(path)
    desc_path = path.with_suffix(".json")
    desc = read_json(desc_path)
    if desc.get("format") != ROUTE_FORMAT:
        raise CheckpointError(
            f"{str(desc_path)!r} is not a stitchframe route description (format {desc.get('format')!r})"
        )
    import yaml

    spec = parse_spec(yaml.safe_load(desc["spec"]), source=f"{desc_path}:spec")
    from .engine import assemble

    snnet = assemble(spec, registries if registries is not None else load_registries())
    rid = desc["route_id"]
    if rid >= len(snnet.routes) or snnet.routes[rid].describe() != desc["route"]["name"]:
        raise CheckpointError(
            f"{str(desc_path)!r}: route {rid} ({desc['route']['name']!r}) does not exist in the SN-Net its spec "
            "builds now; the installed plugins generate other routes"
        )
    module = snnet.export(rid, merge=bool(desc.get("merged"))).eval()
    load_module_state(module, desc_path.with_name(desc["weights"]), kind="route")
    return module
