"""Evaluating every route of an SN-Net in one pass over the data.

Each batch is read once.  The routes are arranged in a trie whose edges are
the operations a route runs (a stem, a block, a stitching layer, a head);
routes that share a prefix (the same stem and first blocks, the same stitch
into the same blocks, ...) share its compute, because the activation at a
branch point is computed once and reused by every route below it.  For an
SN-Net with N routes this costs far fewer block forwards than N separate
passes, and every route's outputs are bit-identical to
:meth:`SNNet.forward_route` (the same modules run in the same order).

Per-batch partial sums are appended to a JSONL file as they come, so an
evaluation that is interrupted resumes where it stopped.

Under ``torchrun`` (``distributed=True``) the batches are dealt out to the
ranks in turn (batch ``b`` to rank ``b mod world_size``), every rank runs all
routes through the trie on its batches, and the per-batch sums are gathered
after each round and added in batch order; rank 0 alone writes the JSONL.
Splitting batches rather than routes keeps the prefix sharing whole, and
the sums, the file and the results are those of a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .anchors import device_of, to_device
from .distributed import all_gather_objects, is_distributed, on_main
from .errors import StitchframeError
from .snnet import SNNet

__all__ = [
    "RouteResult",
    "Evaluation",
    "RouteTrie",
    "evaluate_routes",
    "record_results",
    "measure_latency",
    "logits_of",
    "state_fingerprint",
]


@attrs.frozen(kw_only=True)
class RouteResult:
    """Metrics of one route.

    Attributes:
        id: Route id in the SN-Net's route table.
        name: The route, printed.
        accuracy: Top-1 accuracy in percent.
        loss: Mean cross-entropy.
        samples: Number of examples evaluated.
        flops: Forward FLOPs per example (from the route table).
        params: Parameters used by the route.
        latency_ms: Median latency of one forward at batch size 1 (when measured).
        metrics: Every metric of the route's task by name (a task other than
            classification: ``accuracy`` is then the task's, e.g. pixel accuracy).
    """

    id: int
    name: str
    accuracy: float
    loss: float
    samples: int
    flops: int
    params: int
    latency_ms: float | None = None
    metrics: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Evaluation:
    """The result of :func:`evaluate`.

    Attributes:
        routes: One result per route, in route-id order.
        batches: Batches evaluated (including resumed ones).
        resumed_batches: Batches read back from the partial-results file.
        block_forwards: Block forwards run with prefix sharing (this call's batches only).
        naive_block_forwards: Block forwards that evaluating each route
            separately would have run on the same batches.
    """

    routes: tuple[RouteResult, ...]
    batches: int
    resumed_batches: int = 0
    block_forwards: int = 0
    naive_block_forwards: int = 0


class _Op(NamedTuple):
    """One step of a route: ``kind`` is ``stem``, ``block``, ``stitch`` or ``head``."""

    kind: str
    anchor: str
    uses_context: bool
    prepare: Callable[[Any], Any]
    modules: tuple

    @property
    def key(self) -> tuple:
        return (self.kind, self.anchor, tuple(id(m) for m in self.modules))


class _Node:
    __slots__ = ("op", "children", "routes", "first")

    def __init__(self, op: _Op | None, first: int = 0) -> None:
        self.op = op
        self.children: dict[tuple, _Node] = {}
        self.routes: list[int] = []
        self.first = first  # a route through this node: per-route BatchNorm rows are equal for all of them


def _ops(plan) -> Iterator[_Op]:
    """The operations of an SNNet execution plan, in order (mirrors how :class:`~stitchframe.SNNet` runs a plan)."""
    for s in plan:
        if s.stem is not None:
            yield _Op("stem", s.key, s.uses_context, s.prepare, (s.stem,))
        for blk in s.blocks:
            yield _Op("block", s.key, s.uses_context, s.prepare, (blk,))
        if s.stitch is not None:
            yield _Op("stitch", s.key, False, s.prepare, (s.stitch,))
        if s.head is not None:
            yield _Op("head", s.key, s.uses_context, s.prepare, (s.norm, s.head))


_NO_CTX = object()


def _apply(op: _Op, x: Any, inputs: Any, ctxs: dict[str, Any]) -> Any:
    ctx = None
    if op.uses_context:
        ctx = ctxs.get(op.anchor, _NO_CTX)
        if ctx is _NO_CTX:
            ctx = ctxs[op.anchor] = op.prepare(inputs)
    if op.kind == "stem":
        return op.modules[0](inputs, ctx) if op.uses_context else op.modules[0](inputs)
    if op.kind == "block":
        return op.modules[0](x, ctx) if op.uses_context else op.modules[0](x)
    if op.kind == "stitch":
        return op.modules[0](x)
    norm, head = op.modules
    if norm is not None:
        x = norm(x)
    return head(x, ctx) if op.uses_context else head(x)


class RouteTrie:
    """The routes of an SN-Net as a trie of operations; runs them all on one batch.

    Args:
        snnet: The SN-Net.
        routes: Route ids to include (default: all).
    """

    def __init__(self, snnet: SNNet, routes: Sequence[int] | None = None) -> None:
        self.root = _Node(None)
        self.route_ids = list(range(len(snnet.routes))) if routes is None else list(routes)
        self.naive_blocks = 0
        self.bn_state = snnet.route_bn
        for rid in self.route_ids:
            node = self.root
            for op in _ops(snnet.plan(rid)):
                self.naive_blocks += op.kind == "block"
                if op.key not in node.children:
                    node.children[op.key] = _Node(op, rid)
                node = node.children[op.key]
            node.routes.append(rid)

    @property
    def shared_blocks(self) -> int:
        """Block forwards one batch costs with sharing (block nodes in the trie)."""
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += node.op is not None and node.op.kind == "block"
            stack.extend(node.children.values())
        return count

    def run(self, inputs: Any, on_output: Callable[[int, Any], None]) -> int:
        """Run every route on ``inputs``, calling ``on_output(route_id, output)`` for each.

        Depth-first, so only the activations on the current path are alive.

        Returns:
            The number of block forwards run.
        """
        ctxs: dict[str, Any] = {}
        counter = [0]

        bn = self.bn_state

        def walk(node: _Node, x: Any) -> None:
            for child in node.children.values():
                if bn is not None:
                    bn.route = child.first
                y = _apply(child.op, x, inputs, ctxs)
                counter[0] += child.op.kind == "block"
                for rid in child.routes:
                    on_output(rid, y)
                walk(child, y)

        try:
            walk(self.root, None)
        finally:
            if bn is not None:
                bn.route = None
        return counter[0]


def logits_of(output: Any, where: str = "") -> torch.Tensor:
    """The logits of a model output: a tensor, an object with ``.logits``, or a mapping with ``"logits"``."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    raise StitchframeError(
        f"{where or 'The model'} returned {type(output).__name__}; evaluation needs logits: a tensor, "
        "an object with .logits or a mapping with 'logits' (fix the anchor adapter's head)"
    )


def state_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------
# partial results (JSONL)
# ---------------------------------------------------------------------------
def read_partial(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """Batch records of a matching partial-results file (an empty list when absent or stale)."""
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    good_bytes = 0
    with open(path, "rb") as fh:
        lines = fh.readlines()
    for i, raw in enumerate(lines):
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not raw.endswith(b"\n"):
            break
        if i == 0:
            if rec.get("header") != header:
                return []
        elif rec.get("batch") != len(records):
            break
        else:
            records.append(rec)
        good_bytes += len(raw)
    if good_bytes < path.stat().st_size:  # drop a truncated tail so appends stay parseable
        with open(path, "rb+") as fh:
            fh.truncate(good_bytes)
    return records


class PartialWriter:
    """Appends batch records to a partial-results file (JSONL), each flushed to disk; ``path=None`` writes nothing.

    A ``fresh`` file starts with the header that :func:`read_partial` matches.
    """

    def __init__(self, path: Path | None, header: dict[str, Any], fresh: bool) -> None:
        self.fh = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self.write({"header": header})

    def write(self, record: dict[str, Any]) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(record) + "\n")
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------
def _batch_metrics(inputs: Any, target: torch.Tensor, trie: RouteTrie, names: list[str]):
    """Correct predictions and summed loss of every route on one batch, and the block forwards run."""
    correct = torch.zeros(len(names), dtype=torch.float64, device=target.device)
    loss = torch.zeros(len(names), dtype=torch.float64, device=target.device)

    def on_output(rid: int, out: Any) -> None:
        logits = logits_of(out, f"Route {rid} ({names[rid]})").float()
        if logits.dim() != 2 or logits.shape[0] != target.shape[0]:
            raise StitchframeError(
                f"Route {rid} ({names[rid]}) returned logits of shape {tuple(logits.shape)} for a batch of "
                f"{target.shape[0]}; evaluation needs [batch, classes]"
            )
        correct[rid] = (logits.argmax(-1) == target).sum()
        loss[rid] = F.cross_entropy(logits, target, reduction="sum")

    blocks = trie.run(inputs, on_output)
    return correct.tolist(), loss.tolist(), blocks


def _check_labels(target: torch.Tensor) -> None:
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise StitchframeError(f"Evaluation needs integer class labels, got targets of dtype {target.dtype}")


def evaluate_routes(
    snnet: SNNet,
    dataset: Any,
    *,
    batch_size: int = 128,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    num_workers: int = 0,
    partial_path: str | os.PathLike[str] | None = None,
    fingerprint: str = "",
    latency: bool = False,
    latency_repeats: int = 10,
    record: bool = True,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
) -> Evaluation:
    """Evaluate every route of ``snnet`` on ``dataset`` in one pass.

    Args:
        snnet: The SN-Net (run in eval mode under ``torch.no_grad``; every module's mode is restored).
        dataset: Yields ``(inputs, target)``; inputs are tensors or mappings of tensors (text).
        batch_size: Batch size.
        max_batches: Evaluate the first ``max_batches`` batches only.
        device: Where to run (default: where the SN-Net's parameters are).
        collate_fn: DataLoader collation (text datasets).
        num_workers: DataLoader workers.
        partial_path: JSONL file for per-batch partial sums.  When it holds
            batches of the same evaluation (same ``fingerprint``, routes,
            batch size and dataset size), those batches are skipped.
        fingerprint: Identifies the weights being evaluated; a partial file
            with another fingerprint is discarded.
        latency: Also measure each route's latency (median over
            ``latency_repeats`` forwards of one example).
        latency_repeats: Timed forwards per route.
        record: Record ``accuracy``, ``loss`` (and ``latency_ms``) on the
            routes with :meth:`SNNet.set_route_meta`, so ``select_for`` uses them.
        progress: Called as ``progress(batches_done, batches_total)``.
        distributed: Under an initialised process group of several ranks
            (``torchrun``), split the batches over the ranks and gather the
            sums; every rank must call this with the same arguments and the
            same weights, and every rank returns the whole evaluation.  Rank 0
            alone reads and writes ``partial_path`` and measures latency.
            Without a process group this changes nothing.

    Returns:
        The per-route results and compute statistics.
    """
    device = torch.device(device) if device is not None else device_of(snnet)
    names = [r.describe() for r in snnet.routes]
    total = -(-len(dataset) // batch_size)
    if max_batches is not None:
        total = min(total, max_batches)
    header = {"fingerprint": fingerprint, "routes": names, "batch_size": batch_size, "dataset_size": len(dataset)}
    path = Path(partial_path) if partial_path is not None else None
    split = distributed and is_distributed()
    main = not split or torch.distributed.get_rank() == 0
    first = on_main if split else (lambda fn: fn())  # rank 0 alone touches the file and times routes
    sums = _Sums(len(names))
    for record_ in first(lambda: read_partial(path, header)[:total] if path is not None else []):
        sums.add(record_)
    resumed = sums.batches
    writer = PartialWriter(path if main else None, header, fresh=resumed == 0)
    modes = [(m, m.training) for m in snnet.modules()]  # restored one by one afterwards
    snnet.eval()
    try:
        batches = RankBatches(dataset, batch_size, range(resumed, total), split, collate_fn, num_workers)
        _run_batches(RouteTrie(snnet), batches, sums, writer, device, names, progress, total)
        if sums.samples == 0:
            raise StitchframeError("Evaluation got no data: the validation split is empty")
        lat = first(lambda: measure_latency(snnet, dataset, device=device, repeats=latency_repeats,
                                            collate_fn=collate_fn)) if latency else {}
    finally:
        writer.close()
        for m, mode in modes:
            m.training = mode
    evaluation = sums.evaluation(snnet, names, lat, resumed)
    if record:
        record_results(snnet, evaluation)
    return evaluation


class RankBatches:
    """This rank's share of the batches to evaluate (all of them when not split), and how to gather.

    Batch ``b`` covers examples ``b * batch_size`` onwards; ranks take the
    batches in turn, so the ``r``-th batch of rank ``k`` is batch
    ``ids[r * world + k]`` and gathering one round in rank order keeps
    batch order.
    """

    def __init__(self, dataset: Any, batch_size: int, ids: range, split: bool, collate_fn, num_workers: int) -> None:
        world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if split else (1, 0)
        self.split, self.rounds = split, -(-len(ids) // world)
        mine = [list(range(b * batch_size, min((b + 1) * batch_size, len(dataset)))) for b in ids[rank::world]]
        self.loader = DataLoader(dataset, batch_sampler=mine, collate_fn=collate_fn, num_workers=num_workers)

    def gather(self, item: Any) -> list[Any]:
        return all_gather_objects(item) if self.split else [item]


@attrs.define
class _Sums:
    """Running per-route sums over batches."""

    n: int
    correct: list[float] = attrs.field(init=False)
    loss: list[float] = attrs.field(init=False)
    samples: int = 0
    batches: int = 0
    block_forwards: int = 0
    naive_block_forwards: int = 0

    def __attrs_post_init__(self) -> None:
        self.correct = [0.0] * self.n
        self.loss = [0.0] * self.n

    def add(self, record: dict[str, Any]) -> None:
        self.correct = [a + x for a, x in zip(self.correct, record["correct"])]
        self.loss = [a + x for a, x in zip(self.loss, record["loss"])]
        self.samples += record["samples"]
        self.batches += 1

    def evaluation(self, snnet: SNNet, names: list[str], latency: dict[int, float], resumed: int) -> Evaluation:
        results = tuple(
            RouteResult(
                id=i,
                name=names[i],
                accuracy=100.0 * self.correct[i] / self.samples,
                loss=self.loss[i] / self.samples,
                samples=self.samples,
                flops=int(snnet.routes[i].flops or 0),
                params=int(snnet.routes[i].params or 0),
                latency_ms=latency.get(i),
            )
            for i in range(self.n)
        )
        return Evaluation(routes=results, batches=self.batches, resumed_batches=resumed,
                          block_forwards=self.block_forwards, naive_block_forwards=self.naive_block_forwards)


def _run_batches(trie: RouteTrie, batches: RankBatches, sums: _Sums, writer: PartialWriter, device: torch.device,
                 names: list[str], progress: Callable[[int, int], None] | None, total: int) -> None:
    """Evaluate this rank's batches round by round; every round's sums (all ranks', in batch order) go
    to ``writer`` and ``sums``."""
    if progress is not None:
        progress(sums.batches, total)
    it = iter(batches.loader)
    with torch.no_grad():
        for _ in range(batches.rounds):
            item = None
            batch = next(it, None)
            if batch is not None:
                inputs, target = batch
                inputs = to_device(inputs, device)
                target = torch.as_tensor(target)
                _check_labels(target)
                target = target.to(device=device, dtype=torch.long)
                correct, loss, blocks = _batch_metrics(inputs, target, trie, names)
                item = (int(target.shape[0]), correct, loss, blocks)
            for got in batches.gather(item):
                if got is None:  # a rank without a batch in the last round
                    continue
                samples, correct, loss, blocks = got
                record = {"batch": sums.batches, "samples": samples, "correct": correct, "loss": loss}
                writer.write(record)
                sums.add(record)
                sums.block_forwards += blocks
                sums.naive_block_forwards += trie.naive_blocks
            if progress is not None:
                progress(sums.batches, total)


def record_results(snnet: SNNet, evaluation: Evaluation) -> None:
    """Store each route's ``accuracy``, ``loss`` and ``latency_ms`` in its metadata."""
    for r in evaluation.routes:
        meta: dict[str, Any] = {"accuracy": r.accuracy, "loss": r.loss}
        if r.latency_ms is not None:
            meta["latency_ms"] = r.latency_ms
        snnet.set_route_meta(r.id, **meta)


def measure_latency(
    snnet: SNNet,
    dataset: Any,
    *,
    device: torch.device | str | None = None,
    repeats: int = 10,
    warmup: int = 2,
    collate_fn: Callable[[list], Any] | None = None,
) -> dict[int, float]:
    """Median wall-clock milliseconds of one forward at batch size 1, per route.

    Args:
        snnet: The SN-Net.
        dataset: The first example is used as input.
        device: Where to run (default: the SN-Net's device).
        repeats: Timed forwards per route.
        warmup: Untimed forwards first.
        collate_fn: Collation for one example (text datasets).

    Returns:
        Milliseconds by route id.
    """
    device = torch.device(device) if device is not None else device_of(snnet)
    batch = (collate_fn or torch.utils.data.default_collate)([dataset[0]])
    inputs = to_device(batch[0], device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out: dict[int, float] = {}
    modes = [(m, m.training) for m in snnet.modules()]  # restored one by one afterwards
    snnet.eval()
    try:
        with torch.no_grad():
            for i in range(len(snnet.routes)):
                for _ in range(warmup):
                    snnet.forward_route(inputs, i)
                times = []
                for _ in range(max(1, repeats)):
                    sync()
                    t0 = time.perf_counter()
                    snnet.forward_route(inputs, i)
                    sync()
                    times.append((time.perf_counter() - t0) * 1000.0)
                out[i] = statistics.median(times)
    finally:
        for m, mode in modes:
            m.training = mode
    return out
