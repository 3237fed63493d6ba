"""Tasks: what ``stitchframe build`` trains and evaluates on every route.

A task is registered through the ``stitchframe_register_tasks`` hook and named
in a spec under ``task.name``.  The built-in ``classification`` task is the
SN-Net itself: every route's output is its end anchor's class logits, trained
with cross-entropy (or distillation) and evaluated for top-1 accuracy by the
shared-prefix evaluator (:func:`stitchframe.evaluate_routes`).

Any other task (the ``segmentation`` task of stitchframe-dense, or a subclass
of :class:`ClassificationTask` with other metrics) goes through the generic
path.  :meth:`Task.build_model` may add layers of the task's own around the
SN-Net: it returns a module that holds the SN-Net and computes the task's
output for the SN-Net's *selected* route, so the training loop and the
evaluator switch routes as they always do, with ``snnet.select(route)``
(``None``: the SN-Net itself is the model).  The build trains the model with
:meth:`Task.loss`, evaluates every route with :func:`evaluate_task_routes`
(each route runs on its own: prefixes are not shared) from the additive
per-batch statistics of :meth:`Task.batch_stats`, ranks routes by
:attr:`Task.metric` in the report, and saves the task's own layers (the
tensors the SN-Net does not hold) in ``task.safetensors`` next to the
SN-Net's weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .anchors import device_of, to_device
from .datasets import DatasetSplits
from .distributed import is_distributed, on_main
from .errors import CheckpointError, SpecError, StitchframeError
from .evaluate import Evaluation, PartialWriter, RankBatches, RouteResult, logits_of, read_partial
from .io import atomic_write
from .objectives import output_logits, training_loss
from .registry import NoOptions
from .snnet import SNNet
from .spec import Spec, TrainSpec, structure_options

__all__ = [
    "Task",
    "ClassificationTask",
    "TASK_WEIGHTS",
    "load_task",
    "check_task_spec",
    "task_model",
    "evaluate_task_routes",
    "save_task_layers",
    "load_task_layers",
]

#: The file of a build output holding a task's own layers.
TASK_WEIGHTS = "task.safetensors"


class Task:
    """Base class of registered tasks (see the module docs and the ``stitchframe_register_tasks`` hook).

    Args:
        options: An instance of :attr:`Options` (default: its defaults).

    Attributes:
        metric: Key of the metric that ranks routes (higher is better): the
            report's Pareto front, its summary and plot use it, and it is
            recorded in every route's metadata for ``select_for(metric=...)``.
        metric_label: How the report labels it (``"mIoU %"``).
    """

    Options: ClassVar[type] = NoOptions
    metric: ClassVar[str] = "accuracy"
    metric_label: ClassVar[str] = "top-1 %"

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def check(self, snnet: SNNet, splits: DatasetSplits, spec: Spec) -> None:
        """Raise :class:`~stitchframe.SpecError` (saying which spec field to change) when data and anchors do not fit."""

    def build_model(self, snnet: SNNet, splits: DatasetSplits) -> nn.Module | None:
        """The module the build trains and evaluates, or ``None`` to use the SN-Net itself.

        It must hold ``snnet`` as a submodule and compute the task's output
        for ``snnet``'s selected route.  It is made once, before calibration,
        from the seeded random state, so a resumed build makes the same one.
        Its parameters that are not the SN-Net's train at ``train.stitch_lr``.
        """
        return None

    def loss(self, output: Any, target: torch.Tensor, cfg: TrainSpec) -> torch.Tensor:
        """The training loss of one batch (a scalar), from the model's output."""
        raise NotImplementedError(f"{type(self).__name__} does not define loss()")

    def batch_stats(self, output: Any, target: torch.Tensor) -> list[float]:
        """Additive statistics of one validation batch (sums, so batches add up element-wise)."""
        raise NotImplementedError(f"{type(self).__name__} does not define batch_stats()")

    def metrics(self, stats: Sequence[float]) -> dict[str, float]:
        """Metrics from the statistics summed over all batches: ``accuracy`` (%), ``loss`` and :attr:`metric`."""
        raise NotImplementedError(f"{type(self).__name__} does not define metrics()")


class ClassificationTask(Task):
    """Class logits from every route's end anchor: cross-entropy or distillation, top-1 accuracy.

    The build trains and evaluates the SN-Net itself with its own training
    options (distillation) and the shared-prefix evaluator, which give the
    numbers ``loss``, ``batch_stats`` and ``metrics`` define here.  A subclass
    (a task of its own, other metrics) goes through the generic path: the
    SN-Net trained with its ``loss`` and evaluated by
    :func:`evaluate_task_routes` with its ``batch_stats`` and ``metrics``.
    """

    def check(self, snnet: SNNet, splits: DatasetSplits, spec: Spec) -> None:
        """Targets are class indices, and every anchor outputs one logit per class of the dataset."""
        item = splits.train[0] if len(splits.train) else None
        target = item[1] if isinstance(item, (tuple, list)) and len(item) == 2 else None
        if isinstance(target, torch.Tensor) and target.dim() > 0:
            raise SpecError(
                f"task: classification needs one class per example, but the dataset gives targets of shape "
                f"{tuple(target.shape)} (masks?); set task.name to a dense task (stitchframe-dense: segmentation)"
            )
        device = device_of(snnet)
        with torch.no_grad():
            for i, anchor in enumerate(snnet.anchors.values()):
                if anchor.example_inputs is None:
                    continue
                modes = [(m, m.training) for m in anchor.modules()]
                anchor.eval()
                try:
                    out = logits_of(anchor(to_device(anchor.example_inputs, device)), f"Anchor {anchor.name!r}")
                finally:
                    for m, mode in modes:
                        m.training = mode
                if out.shape[-1] != splits.num_classes:
                    data = splits.name or (spec.data.name if spec.data is not None else "?")
                    raise SpecError(
                        f"anchors[{i}] ({anchor.name!r}) outputs {out.shape[-1]} classes but dataset {data!r} has "
                        f"{splits.num_classes}; set the anchor's number of classes to {splits.num_classes} in "
                        f"anchors[{i}].options"
                    )

    def loss(self, output: Any, target: torch.Tensor, cfg: TrainSpec) -> torch.Tensor:
        return training_loss(output_logits(output), target, cfg)

    def batch_stats(self, output: Any, target: torch.Tensor) -> list[float]:
        logits = logits_of(output).float()
        return [float((logits.argmax(-1) == target).sum()), float(F.cross_entropy(logits, target, reduction="sum")),
                float(target.shape[0])]

    def metrics(self, stats: Sequence[float]) -> dict[str, float]:
        correct, loss, n = stats
        return {"accuracy": 100.0 * correct / n, "loss": loss / n}


def load_task(spec: Spec, registries: Any) -> Task:
    """The spec's task, from the task registry, with its options validated at ``task.options``.

    Raises:
        UnknownNameError: No task of that name.
        SpecError: Bad options.
    """
    entry = registries.tasks.get(spec.task.name, where="task.name")
    options = structure_options(entry.options, spec.task.options, "task.options")
    task = entry.obj(options)
    if not isinstance(task, Task):
        raise StitchframeError(f"task {spec.task.name!r} (plugin {entry.plugin!r}) made a {type(task).__name__}, "
                               "not a stitchframe.Task")
    return task


def check_task_spec(spec: Spec) -> None:
    """Settings that only the built-in classification supports, refused for other tasks.

    Raises:
        SpecError: ``train.loss: distill``, ``calibration.heads`` or ``eval.latency``.
    """
    if spec.train.loss == "distill":
        raise SpecError(f"train.loss: 'distill' distils class logits; task {spec.task.name!r} trains with its own "
                        "loss: set train.loss: ce")
    if spec.calibration.heads:
        raise SpecError(f"calibration.heads fits the anchors' classifiers, which task {spec.task.name!r} does not "
                        "use: set calibration.heads: false")
    if spec.eval.latency:
        raise SpecError(f"eval.latency: latency is measured on the SN-Net's routes, not through task "
                        f"{spec.task.name!r}'s model; set eval.latency: false")


def task_model(task: Task, snnet: SNNet, splits: DatasetSplits, spec: Spec,
               device: torch.device) -> torch.nn.Module | None:
    """Check the task against data and anchors, then make the model it trains and evaluates.

    ``None`` for the built-in classification task (the SN-Net, with its own
    training options and the shared-prefix evaluator); the SN-Net itself for
    another task without layers of its own.  Made before calibration, from
    the seeded random state, so that a resumed build makes the same one.
    """
    task.check(snnet, splits, spec)
    if type(task) is ClassificationTask:
        return None
    check_task_spec(spec)
    model = task.build_model(snnet, splits)
    if model is None:
        return snnet
    if not any(m is snnet for m in model.modules()):
        raise SpecError(f"task {spec.task.name!r}: build_model returned a {type(model).__name__} that does not hold "
                        "the SN-Net; a task's model must hold it as a submodule and run its selected route")
    return model.to(device)


# ---------------------------------------------------------------------------
# the task's own layers
# ---------------------------------------------------------------------------
def _own_state(model: nn.Module, snnet: SNNet) -> dict[str, torch.Tensor]:
    """The model's state that the SN-Net does not hold (by tensor identity)."""
    held = {id(t) for t in snnet.state_dict(keep_vars=True).values()}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) not in held}


def save_task_layers(model: nn.Module, snnet: SNNet, path: str | os.PathLike[str],
                     metadata: dict[str, str] | None = None) -> Path:
    """Save the task's own layers (the model's tensors that are not the SN-Net's) to safetensors, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in _own_state(model, snnet).items()}
    meta = {"format": "task", **{k: str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_task_layers(model: nn.Module, snnet: SNNet, path: str | os.PathLike[str]) -> None:
    """Load what :func:`save_task_layers` wrote into ``model``.

    Raises:
        CheckpointError: The file is missing or corrupt, or its tensors are not the model's own.
    """
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{str(path)!r} does not exist; the build output is incomplete, rebuild") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"{str(path)!r} cannot be read ({exc}); it is corrupt or truncated") from None
    own = _own_state(model, snnet)
    if set(tensors) != set(own):
        odd = sorted(set(tensors) ^ set(own))
        raise CheckpointError(f"{str(path)!r} does not hold this task's layers (e.g. {odd[0]!r} differs); "
                              "it was saved with other task options, rebuild")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} has shape {tuple(t.shape)}, the task's layer "
                                  f"has {tuple(own[name].shape)}; it was saved with other task options, rebuild")
    model.load_state_dict(tensors, strict=False)


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
def evaluate_task_routes(
    model: nn.Module,
    snnet: SNNet,
    task: Task,
    dataset: Any,
    *,
    batch_size: int = 128,
    max_batches: int | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    num_workers: int = 0,
    partial_path: str | os.PathLike[str] | None = None,
    fingerprint: str = "",
    record: bool = True,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
) -> Evaluation:
    """Evaluate every route of ``snnet`` through a task's model, one pass over ``dataset``.

    Each batch is read once and every route runs on it in turn
    (``snnet.select(route)``, then ``model(inputs)``; prefixes are not
    shared); the task's per-batch statistics are summed and turned into
    metrics at the end.  Per-batch statistics are appended to
    ``partial_path`` (JSONL), so an interrupted evaluation resumes, as with
    :func:`stitchframe.evaluate_routes`.

    Args:
        model: What :meth:`Task.build_model` returned (run in eval mode under ``no_grad``; modes restored).
        snnet: The SN-Net it holds (its selection is restored).
        task: The task.
        dataset: Yields ``(inputs, target)``.
        batch_size: Batch size.
        max_batches: Evaluate the first ``max_batches`` batches only.
        collate_fn: DataLoader collation.
        num_workers: DataLoader workers.
        partial_path: JSONL file of per-batch statistics.
        fingerprint: Identifies the weights; a partial file with another one is discarded.
        record: Record every metric on the routes (:meth:`SNNet.set_route_meta`).
        progress: Called as ``progress(batches_done, batches_total)``.
        distributed: Under an initialised process group of several ranks
            (``torchrun``), deal the batches out to the ranks in turn (as
            :func:`stitchframe.evaluate_routes` does) and gather each round's
            statistics in batch order; every rank must call this with the same
            arguments and weights, and every rank returns the whole evaluation.
            Rank 0 alone reads and writes ``partial_path``.  Without a process
            group this changes nothing.

    Returns:
        One :class:`~stitchframe.RouteResult` per route, with all the task's metrics in ``metrics``.
    """
    device = device_of(model)
    names = [r.describe() for r in snnet.routes]
    total = -(-len(dataset) // batch_size)
    if max_batches is not None:
        total = min(total, max_batches)
    header = {"fingerprint": fingerprint, "routes": names, "batch_size": batch_size, "dataset_size": len(dataset),
              "task": type(task).__name__}
    path = Path(partial_path) if partial_path is not None else None
    split = distributed and is_distributed()
    first = on_main if split else (lambda fn: fn())  # rank 0 alone touches the file
    done = first(lambda: read_partial(path, header)[:total] if path is not None else [])
    sums = _TaskSums()
    for rec in done:
        sums.add(rec)
    main = not split or torch.distributed.get_rank() == 0
    writer = PartialWriter(path if main else None, header, fresh=not done)
    modes, selected = [(m, m.training) for m in model.modules()], snnet.selected_id
    model.eval()
    try:
        batches = RankBatches(dataset, batch_size, range(len(done), total), split, collate_fn, num_workers)
        _run_task_batches(model, snnet, task, batches, sums, writer, device, progress, total)
    finally:
        writer.close()
        snnet.select(selected)
        for m, mode in modes:
            m.training = mode
    if sums.stats is None:
        raise StitchframeError("Evaluation got no data: the validation split is empty")
    return _evaluation(snnet, task, names, sums, total, len(done), record)


class _TaskSums:
    """Per-route statistics summed over batches, and the batch and example counts."""

    def __init__(self) -> None:
        self.stats: list[list[float]] | None = None
        self.samples = self.batches = 0

    def add(self, record: dict[str, Any]) -> None:
        stats = record["stats"]
        self.stats = ([list(s) for s in stats] if self.stats is None
                      else [[a + b for a, b in zip(x, y)] for x, y in zip(self.stats, stats)])
        self.samples += record["samples"]
        self.batches += 1


def _run_task_batches(model: nn.Module, snnet: SNNet, task: Task, batches: RankBatches, sums: _TaskSums,
                      writer: PartialWriter, device: torch.device, progress: Callable[[int, int], None] | None,
                      total: int) -> None:
    """This rank's batches round by round; every round's statistics (all ranks', in batch order) go to
    ``writer`` and ``sums``."""
    if progress is not None:
        progress(sums.batches, total)
    it = iter(batches.loader)
    with torch.no_grad():
        for _ in range(batches.rounds):
            batch, item = next(it, None), None
            if batch is not None:
                inputs, target = batch
                stats = _batch_stats(model, snnet, task, to_device(inputs, device), target, device)
                item = (int(torch.as_tensor(target).shape[0]), stats)
            for got in batches.gather(item):
                if got is None:  # a rank without a batch in the last round
                    continue
                record = {"batch": sums.batches, "samples": got[0], "stats": got[1]}
                writer.write(record)
                sums.add(record)
            if progress is not None:
                progress(sums.batches, total)


def _batch_stats(model: nn.Module, snnet: SNNet, task: Task, inputs: Any, target: Any,
                 device: torch.device) -> list[list[float]]:
    target = torch.as_tensor(target)
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise StitchframeError(f"Evaluation needs integer class targets, got targets of dtype {target.dtype}")
    target = target.to(device=device, dtype=torch.long)
    out = []
    for rid in range(len(snnet.routes)):
        snnet.select(rid)
        out.append([float(v) for v in task.batch_stats(model(inputs), target)])
    return out


def _evaluation(snnet: SNNet, task: Task, names: list[str], sums: _TaskSums, batches: int, resumed: int,
                record: bool) -> Evaluation:
    results, samples = [], sums.samples
    for rid, stats in enumerate(sums.stats or []):
        metrics = task.metrics(stats)
        missing = {"accuracy", "loss", task.metric} - set(metrics)
        if missing:
            raise StitchframeError(f"{type(task).__name__}.metrics() returned no {', '.join(sorted(missing))}; "
                                   "a task's metrics include accuracy, loss and its metric")
        route = snnet.routes[rid]
        results.append(RouteResult(id=rid, name=names[rid], accuracy=metrics["accuracy"], loss=metrics["loss"],
                                   samples=samples, flops=int(route.flops or 0), params=int(route.params or 0),
                                   metrics=metrics))
        if record:
            snnet.set_route_meta(rid, **metrics)
    return Evaluation(routes=tuple(results), batches=batches, resumed_batches=resumed)
