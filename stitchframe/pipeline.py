"""``stitchframe build``: spec to a trained, evaluated, saved SN-Net.

The stages, in order::

    anchors -> SNNet (assemble) -> datasets -> the task's model -> least-squares
            calibration -> training -> evaluation of every route -> report -> save

The spec's ``task`` (:mod:`stitchframe.tasks`) says what every route is
trained and evaluated for: ``classification`` trains and evaluates the SN-Net
itself; other tasks wrap it in a model of their own (a shared dense head) and
rank the routes by their metric (mIoU).

The build is written into a hidden sibling folder (``.<name>.partial``) and
renamed into place only when everything succeeded, so a failed build leaves
the previous output intact.  The unfinished folder is kept: ``resume=True``
(``--resume``) continues it (calibrated weights, training checkpoints and
evaluation partial sums are reused); a new build without ``resume`` refuses
to discard an unfinished one that holds such work unless ``overwrite=True``.
An existing output is replaced only with ``overwrite=True``
(``--overwrite``), and only if it is a stitchframe build (it holds
``build.json``).  A build that fails before any work worth resuming removes
its unfinished folder.

Output folder::

    snnet.safetensors   the SN-Net's weights; header: spec hash and route table
    task.safetensors    a task's own layers (a dense head), for tasks other than classification
    spec.yaml           the spec (stitchframe.dump_spec)
    routes.json         route records, Pareto front and summary
    routes.md           the route table as markdown
    pareto.png          accuracy vs FLOPs with the anchors and the front
    build.json          manifest: version, spec hash, data, timings, summary
    checkpoints/        training checkpoints and evaluation partial sums

Under ``torchrun`` the process group starts first.  Rank 0 alone touches
the output folder (the others wait and receive its result or its error) and
the other ranks then check that they see the same folder.  Every rank loads
the anchors and the data, calibrates on the same batches and takes rank 0's
weights (bit for bit; a task's model, its own layers included); all train
together (DDP); the evaluation's batches are split over the ranks and
gathered (by the shared-prefix evaluator for classification, by
:func:`~stitchframe.evaluate_task_routes` for other tasks); rank 0 alone
writes ``snnet.safetensors``, ``task.safetensors`` and the report, and swaps
the folder into place.  Every rank returns the same :class:`BuildResult`.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader

from .anchors import Preprocess
from .calibration import calibrate, calibrate_heads
from .datasets import DatasetSplits, agreed_preprocess, load_data
from .distributed import DistInfo, broadcast_state, dist_info, on_main, process_group
from .engine import assemble
from .errors import BuildInterrupted, CheckpointError, SpecError
from .evaluate import Evaluation, evaluate_routes, state_fingerprint
from .io import atomic_write, load_module_state, read_json, read_metadata, save_module, write_json
from .outputs import MANIFEST, STAGES, STATE_FILE, partial_build, partial_dir, resolve_output, swap
from .plugins import Registries, load_registries
from .report import route_table, summary_sentence, write_report
from .route_bn import recalibrate_route_bn
from .routes import Route
from .snnet import SNNet
from .spec import Spec, dump_spec, load_spec, spec_hash
from .tasks import (TASK_WEIGHTS, Task, evaluate_task_routes, load_task, load_task_layers, save_task_layers,
                    task_model)
from .validation import recipe_notes

__all__ = [
    "BuildResult",
    "build",
    "evaluate_build",
    "load_snnet",
    "resolve_device",
    "resolve_memory_format",
    "partial_dir",
    "MANIFEST",
    "WEIGHTS",
]

#: The SN-Net weights file of a build output.
WEIGHTS = "snnet.safetensors"


@attrs.frozen(kw_only=True)
class BuildResult:
    """What :func:`build` returns.

    Attributes:
        output: The output folder.
        snnet: The calibrated, trained SN-Net with per-route metrics recorded.
        evaluation: The evaluation of every route (the same on every rank under ``torchrun``).
        summary: The report summary (stitched routes vs the anchors' line).
        train_result: What training returned, as plain data (``None`` when skipped).
        data: One line describing the dataset.
        model: The model the task trained and evaluated (the SN-Net, or a module holding it and the
            task's own layers); ``None`` for the built-in classification task.
    """

    output: Path
    snnet: SNNet
    evaluation: Evaluation | None
    summary: dict[str, Any] | None
    train_result: dict[str, Any] | None
    data: str
    model: torch.nn.Module | None = None


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("device: 'cuda' but no CUDA device is available; set device: auto or cpu")
    return torch.device(name)


def resolve_memory_format(name: str, module: torch.nn.Module) -> torch.memory_format:
    """The spec's ``memory_format`` for ``module`` (an SN-Net or one model).

    ``auto`` -> channels_last when an anchor (or the model) has more than one
    ``Conv2d``: a CNN, not a ViT whose only convolution embeds the patches.
    """
    if name == "auto":
        parts = list(module.anchors.values()) if isinstance(module, SNNet) else [module]
        cnn = any(sum(isinstance(m, torch.nn.Conv2d) for m in part.modules()) > 1 for part in parts)
        name = "channels_last" if cnn else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def place(module: torch.nn.Module, device: torch.device | str, memory_format: str = "auto") -> torch.nn.Module:
    """Move ``module`` to ``device`` with the 4-d parameters in the spec's ``memory_format`` (the layers follow it)."""
    return module.to(device=device, memory_format=resolve_memory_format(memory_format, module))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _progress(console, description: str, total: int | None) -> Iterator[Callable[[int, int], None]]:
    """A progress bar as a ``callback(done, total)``; a no-op without a console.

    A console that is not a terminal (a log file, a pipe) gets a plain line at
    every tenth of the work instead of a live bar.
    """
    if console is None:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    if console.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done, total: bar.update(task, completed=done, total=total)
    else:
        shown = [0]

        def line(done: int, total: int | None) -> None:
            tenth = 10 * done // total if total else 0
            if 0 < done < (total or 0) and tenth > shown[0]:
                shown[0] = tenth
                console.print(f"{description}: {done}/{total}  {time.perf_counter() - start:.0f} s")

        yield line
    console.print(f"{description}: done in {time.perf_counter() - start:.0f} s")


# ---------------------------------------------------------------------------
# output folders
# ---------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------
class _CalibrationBatches:
    """The first ``calibration.batches`` training batches in a seeded order, read from the loader on every pass.

    Each iteration makes a fresh loader with the same seeded generator, so
    every pass (stitch fit, head fit, probe) sees the same batches while
    memory holds one batch at a time, never the list of all of them.
    """

    def __init__(self, spec: Spec, splits: DatasetSplits, *, inputs_only: bool = False) -> None:
        self.spec, self.splits, self.inputs_only = spec, splits, inputs_only
        self.batch_size = spec.calibration.batch_size or spec.train.batch_size
        self.count = max(spec.calibration.batches, 1)

    def __len__(self) -> int:
        return min(self.count, -(-len(self.splits.train) // self.batch_size))

    def __iter__(self) -> Iterator[Any]:
        loader = DataLoader(
            self.splits.train,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.spec.seed),
            collate_fn=self.splits.collate_fn,
            num_workers=self.spec.data.num_workers,
        )
        for batch in islice(loader, self.count):
            yield batch[0] if self.inputs_only and isinstance(batch, (tuple, list)) else batch


def _calibrate(snnet: SNNet, spec: Spec, splits: DatasetSplits, device: torch.device, console, *,
               refit: bool = False) -> None:
    """Least squares for the stitching layers (and, with ``calibration.heads``, the classifiers), streaming.

    ``refit``: the stitching layers alone, again, through the trained anchors (``calibration.refit``).
    """
    cal = spec.calibration
    heads = cal.heads and not refit
    if cal.batches == 0 or (len(snnet.stitches) == 0 and not heads):
        return
    batches = _CalibrationBatches(spec, splits)
    n = len(batches)
    if len(snnet.stitches):
        what = f"{len(snnet.stitches)} stitching layer{'s' if len(snnet.stitches) > 1 else ''}"
        with _progress(console, f"{'re-fitting' if refit else 'calibrating'} {what}", n) as tick:
            calibrate(snnet, batches, ridge=cal.ridge, share_fit=cal.share_fit, augment=cal.augment, seed=spec.seed,
                      device=device, on_batch=lambda b: tick(b + 1, n))
    if heads:
        with _progress(console, f"fitting the classifiers of {len(snnet.anchors)} anchors", n) as tick:
            calibrate_heads(snnet, batches, num_classes=splits.num_classes, ridge=cal.head_ridge, device=device,
                            on_batch=lambda b: tick(b + 1, n))


def _train(snnet: SNNet, spec: Spec, splits: DatasetSplits, device: torch.device, checkpoints: Path,
           resume: bool, console, model: torch.nn.Module | None = None, task: Task | None = None) -> Any:
    if spec.train.epochs == 0 or spec.train.max_steps == 0:
        if console is not None:
            console.print("training skipped (train.epochs or train.max_steps is 0)")
        return None
    from .train import train

    return train(snnet, splits.train, spec.train, device=device, checkpoint_dir=checkpoints, resume=resume,
                 seed=spec.seed, num_workers=spec.data.num_workers, collate_fn=splits.collate_fn, console=console,
                 model=model, task=task)


def _recalibrate_bn(snnet: SNNet, spec: Spec, splits: DatasetSplits, device: torch.device, console, *,
                    anchors_only: bool = False) -> None:
    """BatchNorm statistics from ``train.route_bn_batches`` training batches (streamed): of the anchors
    before calibration (``anchors_only``), of every route after training."""
    n = spec.train.route_bn_batches
    loader = DataLoader(
        splits.train,
        batch_size=spec.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(spec.seed + 1),
        collate_fn=splits.collate_fn,
        num_workers=spec.data.num_workers,
    )
    what = f"{len(snnet.anchors)} anchors" if anchors_only else f"{len(snnet.routes)} routes"
    with _progress(console, f"BatchNorm statistics of {what}", n) as tick:
        recalibrate_route_bn(snnet, islice(loader, n), device=device, anchors_only=anchors_only,
                             anchor_rows="batchnorm" not in spec.train.freeze, on_batch=lambda b: tick(b + 1, n))


def _evaluate(snnet: SNNet, spec: Spec, splits: DatasetSplits, partial_path: Path, console, *,
              max_batches: int | None = None, latency: bool | None = None, model: torch.nn.Module | None = None,
              task: Task | None = None) -> Evaluation:
    max_batches = max_batches if max_batches is not None else spec.eval.max_batches
    total = -(-len(splits.val) // spec.eval.batch_size)
    if max_batches is not None:
        total = min(total, max_batches)
    with _progress(console, f"evaluating {len(snnet.routes)} routes", total) as tick:
        if model is not None:
            if spec.eval.latency if latency is None else latency:
                raise SpecError(f"--latency: latency is measured on the SN-Net's routes, not through task "
                                f"{spec.task.name!r}'s model; evaluate without it")
            return evaluate_task_routes(
                model, snnet, task, splits.val, batch_size=spec.eval.batch_size, max_batches=max_batches,
                collate_fn=splits.collate_fn, num_workers=spec.data.num_workers, partial_path=partial_path,
                fingerprint=f"{spec_hash(spec)}:{state_fingerprint(model)}", progress=tick, distributed=True,
            )
        return evaluate_routes(
            snnet,
            splits.val,
            batch_size=spec.eval.batch_size,
            max_batches=max_batches,
            collate_fn=splits.collate_fn,
            num_workers=spec.data.num_workers,
            partial_path=partial_path,
            fingerprint=f"{spec_hash(spec)}:{state_fingerprint(snnet)}",
            latency=spec.eval.latency if latency is None else latency,
            progress=tick,
            distributed=True,
        )


_JSON_TYPES = (int, float, str, bool, list, dict, type(None))


def _data_used(spec: Spec, splits: DatasetSplits) -> tuple[str, str]:
    """The name of the data actually loaded and a label for titles that says when it replaced the spec's."""
    used = splits.name or spec.data.name
    return used, used if used == spec.data.name else f"{used} (instead of {spec.data.name})"


def _plain(obj: Any, partial: Path, output: Path) -> Any:
    """Plain data for JSON from what training returned, with paths into ``partial`` moved to ``output``."""

    def value(_inst, _attr, v):
        if isinstance(v, Path) and v.is_relative_to(partial):
            v = output / v.relative_to(partial)
        return v if isinstance(v, _JSON_TYPES) else str(v)

    if obj is None:
        return None
    if attrs.has(type(obj)):
        return attrs.asdict(obj, value_serializer=value)
    return str(obj)


def _write_outputs(partial: Path, snnet: SNNet, spec: Spec, splits: DatasetSplits, preprocess: Preprocess,
                   evaluation: Evaluation, train_result: Any, timings: dict[str, float], task: Task,
                   model: torch.nn.Module | None) -> dict[str, Any]:
    spec_h = spec_hash(spec)
    used, label = _data_used(spec, splits)
    summary = write_report(snnet.routes, partial, title=f"{' / '.join(snnet.anchors)} on {label}", data=used,
                           metric=task.metric, metric_label=task.metric_label)
    meta = {"spec_hash": spec_h, "routes": snnet.routes.to_list()}
    save_module(snnet, partial / WEIGHTS, kind="snnet", metadata=meta)
    if model is not None and model is not snnet:
        save_task_layers(model, snnet, partial / TASK_WEIGHTS, {"spec_hash": spec_h, "task": spec.task.name})
    atomic_write(partial / "spec.yaml", lambda tmp: Path(tmp).write_text(dump_spec(spec), encoding="utf-8"))
    from . import __version__

    write_json(partial / MANIFEST, {
        "stitchframe_version": __version__,
        "spec_hash": spec_h,
        "anchors": list(snnet.anchors),
        "routes": len(snnet.routes),
        "task": {"name": spec.task.name, "metric": task.metric, "metric_label": task.metric_label},
        "data": {"name": used, "requested": spec.data.name, "description": splits.description, "num_classes": splits.num_classes,
                 "classes": list(splits.classes), "train_size": len(splits.train), "val_size": len(splits.val)},
        "preprocess": attrs.asdict(preprocess),
        "evaluation": {k: v for k, v in attrs.asdict(evaluation).items() if k != "routes"},
        "summary": summary,
        "train": train_result,
        "seconds": timings,
    })
    return summary


# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------
def build(
    spec: Spec,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    registries: Registries | None = None,
    console: Any = None,
) -> BuildResult:
    """Build an SN-Net from a spec: assemble, calibrate, train, evaluate every route, report, save.

    Args:
        spec: The parsed spec (needs a ``data`` section).
        output: Output folder (default: ``spec.output``).
        overwrite: Replace an existing build output.
        resume: Continue the unfinished build of ``output`` if there is one.
        registries: The registries (default: all installed plugins).
        console: A :class:`rich.console.Console` for progress and the route
            table (``None``: silent); used on rank 0 only under ``torchrun``.

    Under ``torchrun`` every rank calls this with the same arguments; it
    starts the process group unless one exists (and then destroys it when it
    returns), and every rank returns the same result.

    Returns:
        The output folder, the SN-Net, the evaluation and the report summary.

    Raises:
        OutputExistsError: ``output`` exists and ``overwrite`` is false.
        BuildInterrupted: SIGINT/SIGTERM stopped training (after a checkpoint); resume to go on.
        SpecError, UnknownNameError, PluginError, CheckpointError: As raised by the stages.
    """
    regs = registries if registries is not None else load_registries()
    out = resolve_output(spec, output)
    if spec.data is None:
        raise SpecError("data: building needs a data section, e.g. data: {name: fashion_mnist}")
    with process_group(resolve_device(spec.device)) as info:  # under torchrun: before anything shared
        if not info.is_main:
            console = None  # under torchrun only rank 0 reports
        with partial_build(out, spec, resume=resume, overwrite=overwrite, console=console) as (partial, state):
            return _run(spec, regs, out, partial, state, resume, console)


def _load(spec: Spec, regs: Registries) -> tuple[SNNet, Preprocess, list[str], DatasetSplits]:
    """Assemble the SN-Net and load the data (on every rank at once: the hub clients lock their caches)."""
    loaded: dict[str, Any] = {}

    def data_for(anchors) -> tuple[Any, list[str], DatasetSplits]:
        if "splits" not in loaded:
            pre, notes = agreed_preprocess(list(anchors), spec.data.img_size)
            loaded.update(preprocess=pre, notes=notes, splits=load_data(spec, regs, pre))
        return loaded["preprocess"], loaded["notes"], loaded["splits"]

    def probe(anchors) -> _CalibrationBatches:
        # spaces that choose routes on data (e.g. dery) get the calibration batches' inputs, re-read on every pass
        return _CalibrationBatches(spec, data_for(anchors)[2], inputs_only=True)

    snnet = assemble(spec, regs, probe=probe)
    preprocess, notes, splits = data_for(snnet.anchors.values())
    return snnet, preprocess, notes, splits


def _save_stage(snnet: SNNet, model: torch.nn.Module | None, spec_h: str, partial: Path,
                state: dict[str, Any]) -> None:
    """Rank 0 saves the weights (and a task's own layers) and the state of a finished stage; the other ranks
    wait for it."""
    broadcast_state(snnet if model is None else model)  # every rank goes on with rank 0's weights, bit for bit

    def save() -> None:
        _save_weights(snnet, model, partial, {"spec_hash": spec_h, "stage": state["stage"]})
        write_json(partial / STATE_FILE, state)

    on_main(save)


def _run(spec: Spec, regs: Registries, out: Path, partial: Path, state: dict[str, Any], resume: bool,
         console) -> BuildResult:
    spec_h = spec_hash(spec)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _seed_everything(spec.seed)
    task = load_task(spec, regs)
    device = dist_info().device(resolve_device(spec.device))  # under torchrun: this rank's GPU, cuda:LOCAL_RANK
    snnet, preprocess, notes, splits = _load(spec, regs)
    place(snnet, device, spec.memory_format)
    if spec.train.route_bn_batches:
        snnet.enable_route_bn()
    if console is not None:
        for note in notes + recipe_notes(spec):
            console.print(f"note: {note}")
        console.print(f"{len(snnet.routes)} routes over anchors {', '.join(snnet.anchors)}; data: {splits.description}")
    model = task_model(task, snnet, splits, spec, device)
    timings["load"] = time.perf_counter() - t0
    weights = partial / WEIGHTS
    if STAGES.index(state["stage"]) >= 1 and weights.is_file():
        load_module_state(snnet, weights, kind="snnet")
        if model is not None and model is not snnet:
            load_task_layers(model, snnet, partial / TASK_WEIGHTS)
    else:
        t = time.perf_counter()
        if spec.train.route_bn_batches and "batchnorm" not in spec.train.freeze:
            _recalibrate_bn(snnet, spec, splits, device, console, anchors_only=True)
        _calibrate(snnet, spec, splits, device, console)
        timings["calibrate"] = time.perf_counter() - t
        state["stage"] = "calibrated"
        _save_stage(snnet, model, spec_h, partial, state)
    train_result = state.get("train")
    if state["stage"] != "trained":
        t = time.perf_counter()
        result = _train(snnet, spec, splits, device, partial / "checkpoints", resume, console, model, task)
        _stop_if_interrupted(result)
        train_result = _plain(result, partial, out)
        timings["train"] = time.perf_counter() - t
        if spec.calibration.refit:
            t = time.perf_counter()
            _calibrate(snnet, spec, splits, device, console, refit=True)
            timings["refit"] = time.perf_counter() - t
        if spec.train.route_bn_batches:
            t = time.perf_counter()
            _recalibrate_bn(snnet, spec, splits, device, console)
            timings["route_bn"] = time.perf_counter() - t
        state.update(stage="trained", train=train_result)
        _save_stage(snnet, model, spec_h, partial, state)
    t = time.perf_counter()
    evaluation = _evaluate(snnet, spec, splits, partial / "checkpoints" / "evaluation.jsonl", console, model=model,
                           task=task)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    def finish() -> dict[str, Any]:
        summary = _write_outputs(partial, snnet, spec, splits, preprocess, evaluation, train_result, timings, task,
                                 model)
        swap(partial, out)
        return summary

    summary = on_main(finish)
    if console is not None:
        console.print(route_table(snnet.routes, title=f"{len(snnet.routes)} routes ({splits.description})"))
        console.print(f"On {_data_used(spec, splits)[1]}: {summary_sentence(summary)}")
        console.print(f"wrote {out}")
    return BuildResult(output=out, snnet=snnet, evaluation=evaluation, summary=summary, train_result=train_result,
                       data=splits.description, model=model)


def _save_weights(snnet: SNNet, model: torch.nn.Module | None, partial: Path, metadata: dict[str, str]) -> None:
    save_module(snnet, partial / WEIGHTS, kind="snnet", metadata=metadata)
    if model is not None and model is not snnet:
        save_task_layers(model, snnet, partial / TASK_WEIGHTS, metadata)


def _stop_if_interrupted(result: Any) -> None:
    """Training returns early (with a checkpoint) on SIGINT/SIGTERM: the build must stop there too."""
    stopped = result.stopped_early if result is not None else None  # None: training was skipped
    if stopped in ("SIGINT", "SIGTERM"):
        exc = BuildInterrupted(
            f"Build interrupted by {stopped} during training at step {result.steps} of {result.total_steps}; "
            f"the checkpoint {str(result.checkpoint)!r} holds it. Rerun with --resume (resume=True) to continue",
            signal_name=stopped,
        )
        exc.on_rank_zero = not dist_info().is_main  # every rank stops at the same step; rank 0 reports it
        raise exc


# ---------------------------------------------------------------------------
# loading a build
# ---------------------------------------------------------------------------
def load_snnet(output_dir: str | Path, registries: Registries | None = None, *,
               device: str | torch.device | None = None, metrics: str | Path | None = None) -> SNNet:
    """Rebuild the SN-Net of a build output from its ``spec.yaml`` and weights.

    Per-route metrics recorded at build time (accuracy, loss, latency, and
    the task's metric such as ``miou`` for a task other than classification)
    are restored into the route table, so :meth:`SNNet.select_for` works at
    once.  A task's own layers (``task.safetensors``) are not part of the
    SN-Net; :func:`~stitchframe.load_task_layers` loads them into the task's model.

    Args:
        output_dir: A folder written by :func:`build`.
        registries: The registries (default: all installed plugins); they
            must provide the adapters the spec names.
        device: Where to put it (default: CPU), with its 4-d weights in
            the spec's ``memory_format``.
        metrics: A ``routes.json`` report whose metrics replace the build's,
            e.g. ``OUT/evaluation/routes.json`` written by ``stitchframe
            evaluate OUT --latency`` on the machine the model will run on.

    Raises:
        CheckpointError: Not a build output, weights that do not match the
            spec, or a ``metrics`` file of other routes.
    """
    out = Path(output_dir)
    for name in ("spec.yaml", WEIGHTS):
        if not (out / name).is_file():
            raise CheckpointError(f"{str(out)!r} is not a stitchframe build output: {name} is missing")
    spec = load_spec(out / "spec.yaml")
    regs = registries if registries is not None else load_registries()
    header = read_metadata(out / WEIGHTS)
    if header.get("spec_hash") not in (None, spec_hash(spec)):
        raise CheckpointError(
            f"{str(out / WEIGHTS)!r} was saved from another spec (hash {header.get('spec_hash')}) than "
            f"{str(out / 'spec.yaml')!r} ({spec_hash(spec)}); was spec.yaml edited? Restore it or rebuild"
        )
    table, routes = _route_table(header, out / WEIGHTS)
    # rebuild from the saved route table: spaces that chose routes on data need no data to reload
    snnet = assemble(spec, regs, routes=routes or None)
    if spec.train.route_bn_batches:
        snnet.enable_route_bn()
    load_module_state(snnet, out / WEIGHTS, kind="snnet")
    _restore_route_meta(snnet, table, out / WEIGHTS, build_task(out).get("metric"))
    if metrics is not None:
        _apply_report_metrics(snnet, Path(metrics))
    place(snnet, device if device is not None else "cpu", spec.memory_format)
    return snnet.eval()


def _apply_report_metrics(snnet: SNNet, path: Path) -> None:
    """Set each route's accuracy, loss, latency and task metric from a ``routes.json`` report of the same routes."""
    report = read_json(path)
    records = report.get("routes") if isinstance(report, dict) else None
    if not isinstance(records, list) or len(records) != len(snnet.routes):
        raise CheckpointError(f"{str(path)!r} is not a route report of this SN-Net's {len(snnet.routes)} routes; "
                              "pass the routes.json that stitchframe build or evaluate wrote for this output")
    for rec in records:
        ok = isinstance(rec, dict) and isinstance(rec.get("id"), int) and 0 <= rec["id"] < len(snnet.routes)
        if not ok or rec.get("route") != snnet.routes[rec["id"]].describe():
            raise CheckpointError(f"{str(path)!r}: record {rec!r:.120} does not match a route of this SN-Net; "
                                  "pass the routes.json that stitchframe build or evaluate wrote for this output")
        keys = ("accuracy", "loss", "latency_ms", report.get("metric") or "accuracy")  # and a task's metric
        found = {k: rec[k] for k in keys if isinstance(rec.get(k), (int, float))}
        if found:
            snnet.set_route_meta(rec["id"], **found)


def _route_table(header: dict[str, str], where: Path) -> tuple[list[dict[str, Any]], list[Route]]:
    """The route table saved in a weights file's header, as records and routes.

    Raises:
        CheckpointError: The table is not valid JSON or a record is malformed (names the file and the record).
    """
    try:
        table = json.loads(header.get("routes", "[]"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(where)!r}: the route table in the header ('routes') is not valid JSON ({exc}); "
                              "the file is corrupt, rebuild") from None
    if not isinstance(table, list):
        raise CheckpointError(f"{str(where)!r}: the header's 'routes' is a {type(table).__name__}, expected a list")
    routes = []
    for i, rec in enumerate(table):
        try:
            if not isinstance(rec.get("name"), str):
                raise TypeError("no 'name'")
            routes.append(Route.from_dict(rec))
        except Exception as exc:  # noqa: BLE001 - any malformed record is a corrupt file
            raise CheckpointError(f"{str(where)!r}: record routes[{i}] of the header's route table is malformed "
                                  f"({type(exc).__name__}: {exc}); the file is corrupt, rebuild") from None
    return table, routes


def build_task(output_dir: Path) -> dict[str, Any]:
    """The task a build output was made for, from its manifest: ``name``, ``metric`` and ``metric_label``
    (``{}`` for a build without one recorded: classification)."""
    manifest = read_json(output_dir / MANIFEST) if (output_dir / MANIFEST).is_file() else {}
    task = manifest.get("task") if isinstance(manifest, dict) else None
    return task if isinstance(task, dict) else {}


def _restore_route_meta(snnet: SNNet, table: list[dict[str, Any]], where: Path, metric: str | None = None) -> None:
    if table and len(table) != len(snnet.routes):
        raise CheckpointError(f"{str(where)!r} records {len(table)} routes, the spec gives {len(snnet.routes)}")
    for i, rec in enumerate(table):
        if rec["name"] != snnet.routes[i].describe():
            raise CheckpointError(
                f"{str(where)!r}: route {i} is {rec['name']!r} in the file but {snnet.routes[i].describe()!r} "
                "from the spec; the plugins that generate routes changed. Rebuild"
            )
        keys = ("accuracy", "loss", "latency_ms", metric or "accuracy")  # and the build's task metric
        metrics = {k: v for k, v in (rec.get("meta") or {}).items() if k in keys}
        if metrics:
            snnet.set_route_meta(i, **metrics)


def evaluate_build(
    output_dir: str | Path,
    *,
    latency: bool | None = None,
    max_batches: int | None = None,
    registries: Registries | None = None,
    console: Any = None,
) -> Evaluation:
    """Reload a build output and evaluate every route again on its validation data.

    With the spec's evaluation settings this reproduces the build's route
    accuracies.  Results go to ``<output_dir>/evaluation/`` (``routes.json``,
    ``routes.md``, ``pareto.png`` and ``progress.jsonl``, which lets an
    interrupted evaluation resume); the build's own files are left alone.

    Args:
        output_dir: A folder written by :func:`build`.
        latency: Measure latency (default: the spec's ``eval.latency``).
        max_batches: Evaluate at most this many batches (default: the spec's).
        registries: The registries (default: all installed plugins).
        console: A rich console for progress and the route table.
    """
    out = Path(output_dir)
    regs = registries if registries is not None else load_registries()
    spec = load_spec(out / "spec.yaml") if (out / "spec.yaml").is_file() else None
    with process_group(resolve_device(spec.device) if spec is not None else None) as info:
        return _evaluate_output(out, regs, info, latency, max_batches, console if info.is_main else None)


def _evaluate_output(out: Path, regs: Registries, info: DistInfo, latency: bool | None, max_batches: int | None,
                     console) -> Evaluation:
    snnet = load_snnet(out, regs)
    spec = load_spec(out / "spec.yaml")
    if spec.data is None:
        raise SpecError(f"{str(out / 'spec.yaml')!r}: data: the spec has no data section to evaluate on")
    preprocess, _ = agreed_preprocess(list(snnet.anchors.values()), spec.data.img_size)
    splits = load_data(spec, regs, preprocess)
    device = info.device(resolve_device(spec.device))
    place(snnet, device, spec.memory_format)
    task = load_task(spec, regs)
    model = task_model(task, snnet, splits, spec, device)
    if model is not None and model is not snnet:
        load_task_layers(model, snnet, out / TASK_WEIGHTS)
    evaluation = _evaluate(snnet, spec, splits, out / "evaluation" / "progress.jsonl", console,
                           max_batches=max_batches, latency=latency, model=model, task=task)
    used, label = _data_used(spec, splits)
    summary = on_main(lambda: write_report(snnet.routes, out / "evaluation",
                                           title=f"{' / '.join(snnet.anchors)} on {label}", data=used,
                                           metric=task.metric, metric_label=task.metric_label))
    if console is not None:
        evaluated = min(len(splits.val), evaluation.batches * spec.eval.batch_size)
        size = "" if evaluated >= len(splits.val) else f"; evaluated on {evaluated} of the {len(splits.val)} val images"
        console.print(route_table(snnet.routes, title=f"{len(snnet.routes)} routes ({splits.description}{size})"))
        console.print(f"On {label}: {summary_sentence(summary)}")
    return evaluation
