"""3. Evaluating every route: one pass with shared prefixes vs one pass per route.

* ``shared`` - :func:`stitchframe.evaluate.evaluate_routes`: every batch is
  read once and all routes run on it through a trie of operations, so
  routes sharing a prefix (same stem and first blocks, same stitch into the
  same blocks) compute it once;
* ``per_route`` - the reference implementation's way: for every route a full
  pass over the data loader with ``snnet.forward_route``.

Both compute the same accuracy per route (checked).  Reported: the measured
speed-up (per-route time / shared time, interleaved rounds), the FLOPs bound
(sum of the routes' FLOPs / FLOPs executed with sharing, both counted with
torch's FLOP counter on one example), how much of the bound is reached, and
how often the dataset's ``__getitem__`` ran (every image must be read and
decoded once).  The images are random ``uint8`` arrays decoded on access
(to float, resized, normalised), so data loading costs what it costs.

Distributed evaluation (``distributed``): the same shared evaluation split
over N CPU processes with the gloo backend (``evaluate_routes(...,
distributed=True)``, as ``stitchframe build`` does under ``torchrun``) vs
one process, one thread each.  Both variants run in processes forked from
the benchmark (so they share the SN-Net and the data without rebuilding
them), timed inside between barriers, process start excluded; the order
alternates every round.  Reported: the speed-up (1-process time / N-process
time), the ideal (batches / the most batches one rank gets), the
parallelism the machine gave in the same rounds (N times the time of one
process's fixed matmul loop / the time of N such processes at once: other
jobs on a shared machine take cores), whether the accuracies are equal and
whether every image was read once in all.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from stitchframe import count_flops

from . import families
from .harness import Context, Goal, describe_anchors, md_table, num_threads, summarize

NAME = "evaluation"
TITLE = "Evaluating every route: shared prefixes vs one pass per route"


@attrs.frozen(kw_only=True)
class Space:
    """One stitch space to evaluate."""

    space: str
    images: int
    rounds: int


@attrs.frozen(kw_only=True)
class Distributed:
    """The distributed-evaluation comparison: ``processes`` CPU processes vs one."""

    space: str
    images: int
    rounds: int
    processes: int = 2


@attrs.frozen(kw_only=True)
class Params:
    """Parameters of the evaluation benchmark."""

    anchors: tuple
    spaces: tuple[Space, ...]
    batch: int = 16
    threads: int | None = 1
    distributed: Distributed | None = None


def presets() -> dict[str, Params]:
    """The ``quick`` and ``full`` parameters."""
    anchors = tuple(families.deit(32))
    return {
        "quick": Params(anchors=anchors, spaces=(Space(space="snnet", images=16, rounds=2),
                                                 Space(space="snnet2", images=8, rounds=1)),
                        distributed=Distributed(space="snnet", images=32, rounds=2)),
        "full": Params(anchors=anchors, spaces=(Space(space="snnet", images=64, rounds=3),
                                                Space(space="snnet2", images=32, rounds=2)),
                       distributed=Distributed(space="snnet", images=128, rounds=4)),
    }


class CountingImages(Dataset):
    """Random ``uint8`` images decoded on access (float, resize, normalise); counts ``__getitem__`` calls."""

    def __init__(self, n: int, size: tuple[int, int, int], classes: int, *, seed: int, raw: int = 28) -> None:
        g = torch.Generator().manual_seed(seed)
        self.raw = torch.randint(0, 256, (n, size[0], raw, raw), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.size = size[1:]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        x = self.raw[i].float()[None] / 255.0
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        return (x - 0.5) / 0.5, int(self.labels[i])


def per_route(net: Any, dataset: Dataset, batch: int, device: torch.device) -> list[float]:
    """The reference way: a full pass over the data per route; top-1 accuracy (%) per route."""
    acc = []
    with torch.no_grad():
        for rid in range(len(net.routes)):
            correct, n = 0, 0
            for x, y in DataLoader(dataset, batch_size=batch, shuffle=False):
                logits = net.forward_route(x.to(device), rid)
                correct += int((logits.argmax(-1).cpu() == y).sum())
                n += len(y)
            acc.append(100.0 * correct / n)
    return acc


def flops_bound(net: Any, example: torch.Tensor) -> dict[str, int | float]:
    """FLOPs of all routes run separately vs through the shared-prefix trie, counted on one example."""
    from stitchframe.evaluate import RouteTrie

    with torch.no_grad():
        separate = sum(count_flops(net.forward_route, example, rid)[1] for rid in range(len(net.routes)))
        trie = RouteTrie(net)
        _, shared = count_flops(trie.run, example, lambda rid, y: None)
    return {"separate_flops": separate, "shared_flops": shared, "bound": separate / shared,
            "naive_block_forwards": trie.naive_blocks, "shared_block_forwards": trie.shared_blocks}


def _run_space(sp: Space, params: Params, ctx: Context) -> dict[str, Any]:
    from stitchframe.evaluate import evaluate_routes

    net = families.build(params.anchors, ctx.regs(), space=sp.space, device=ctx.device, seed=ctx.seed)
    classes = net.forward_route(families.images(net, 1, device=ctx.device), 0).shape[-1]
    data = CountingImages(sp.images, families.input_size(net), classes, seed=ctx.seed)
    bound = flops_bound(net, data[0][0][None].to(ctx.device))
    times: dict[str, list[float]] = {"shared": [], "per_route": []}
    reads: dict[str, list[int]] = {"shared": [], "per_route": []}
    acc: dict[str, list[float]] = {}
    for r in range(sp.rounds):
        for which in (("shared", "per_route") if r % 2 == 0 else ("per_route", "shared")):
            ctx.log(f"  [{NAME}] {sp.space} ({len(net.routes)} routes, {sp.images} images): {which}, round {r + 1}")
            data.reads = 0
            t0 = time.perf_counter()
            if which == "shared":
                ev = evaluate_routes(net, data, batch_size=params.batch, device=ctx.device, record=False)
                acc[which] = [res.accuracy for res in ev.routes]
            else:
                acc[which] = per_route(net, data, params.batch, ctx.device)
            if ctx.cuda:
                torch.cuda.synchronize(ctx.device)
            times[which].append(time.perf_counter() - t0)
            reads[which].append(data.reads)
    speedup = summarize([b / a for a, b in zip(times["shared"], times["per_route"])])
    return {
        "space": sp.space,
        "routes": len(net.routes),
        "images": sp.images,
        "rounds": sp.rounds,
        **bound,
        "speedup": speedup,
        "share_of_bound": speedup["median"] / bound["bound"],
        "getitem_calls": {k: max(v) for k, v in reads.items()},
        "same_accuracy": acc["shared"] == acc["per_route"],
        "seconds": {k: summarize(v) for k, v in times.items()} if ctx.cuda else None,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, net: Any, data: CountingImages, batch: int, results: Any) -> None:
    """One forked rank: join a gloo group, evaluate its share of the batches, report (rank 0)."""
    import torch.distributed as dist

    from stitchframe.distributed import all_gather_objects
    from stitchframe.evaluate import evaluate_routes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data.reads = 0
        dist.barrier()
        t0 = time.perf_counter()
        ev = evaluate_routes(net, data, batch_size=batch, device="cpu", record=False, distributed=True)
        dist.barrier()
        seconds = time.perf_counter() - t0
        reads = sum(all_gather_objects(data.reads))
        if rank == 0:
            results.put({"seconds": seconds, "accuracy": [r.accuracy for r in ev.routes], "reads": reads})
    finally:
        dist.destroy_process_group()


def _evaluate_forked(world: int, net: Any, data: CountingImages, batch: int) -> dict[str, Any]:
    """Evaluate in ``world`` processes forked from this one (a process group of that size)."""
    fork = multiprocessing.get_context("fork")
    results = fork.SimpleQueue()
    port = _free_port()
    procs = [fork.Process(target=_rank, args=(r, world, port, net, data, batch, results)) for r in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError(f"a forked evaluation rank failed (exit codes {[p.exitcode for p in procs]})")
    return results.get()


def _burn(iterations: int, barrier: Any, results: Any) -> None:
    """One forked process: fixed one-thread matmul work after a common start; reports its start and end."""
    torch.set_num_threads(1)
    a = torch.randn(128, 128)
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(iterations):
        a = torch.tanh(a @ a)
    results.put((t0, time.perf_counter()))


def _burn_forked(world: int, iterations: int) -> float:
    """Wall seconds for ``world`` forked processes that each do the same fixed work at once."""
    fork = multiprocessing.get_context("fork")
    results, barrier = fork.SimpleQueue(), fork.Barrier(world)
    procs = [fork.Process(target=_burn, args=(iterations, barrier, results)) for _ in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    spans = [results.get() for _ in procs]
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _burn_iterations(seconds: float = 0.5) -> int:
    """Iterations of :func:`_burn`'s loop that take about ``seconds`` here, alone."""
    a, n = torch.randn(128, 128), 50
    t0 = time.perf_counter()
    for _ in range(n):
        a = torch.tanh(a @ a)
    return max(10, int(n * seconds / max(time.perf_counter() - t0, 1e-6)))


def _run_distributed(dp: Distributed, params: Params, ctx: Context) -> dict[str, Any]:
    """``dp.processes`` CPU processes vs one on the same shared evaluation (CPU even when ctx is CUDA)."""
    net = families.build(params.anchors, ctx.regs(), space=dp.space, device="cpu", seed=ctx.seed)
    classes = net.forward_route(families.images(net, 1, device="cpu"), 0).shape[-1]
    data = CountingImages(dp.images, families.input_size(net), classes, seed=ctx.seed)
    times: dict[int, list[float]] = {1: [], dp.processes: []}
    burns: dict[int, list[float]] = {1: [], dp.processes: []}
    runs: dict[int, dict[str, Any]] = {}
    iterations = _burn_iterations()
    for r in range(dp.rounds):
        for world in ((1, dp.processes) if r % 2 == 0 else (dp.processes, 1)):
            ctx.log(f"  [{NAME}] distributed {dp.space} ({len(net.routes)} routes, {dp.images} images): "
                    f"{world} process(es), round {r + 1}")
            runs[world] = _evaluate_forked(world, net, data, params.batch)
            times[world].append(runs[world]["seconds"])
            burns[world].append(_burn_forked(world, iterations))  # what parallelism the machine gives right now
    batches = -(-dp.images // params.batch)
    n = dp.processes
    return {
        "space": dp.space,
        "routes": len(net.routes),
        "images": dp.images,
        "rounds": dp.rounds,
        "processes": dp.processes,
        "batches": batches,
        "ideal": batches / -(-batches // dp.processes),
        "speedup": summarize([a / b for a, b in zip(times[1], times[n])]),
        "machine_parallelism": summarize([n * a / b for a, b in zip(burns[1], burns[n])]),
        "same_accuracy": runs[1]["accuracy"] == runs[dp.processes]["accuracy"],
        "getitem_calls": {str(k): v["reads"] for k, v in runs.items()},
        "seconds": {str(k): summarize(v) for k, v in times.items()},
    }


def _distributed_goals(d: dict[str, Any]) -> list[Goal]:
    n = d["processes"]
    reachable = min(d["ideal"], d["machine_parallelism"]["median"])
    return [
        Goal(name=f"distributed: {n} processes vs 1", target=">= 80% of min(ideal, machine parallelism)",
             measured=f"{d['speedup']['median']:.2f}x; ideal {d['ideal']:.2f}x, machine "
                      f"{d['machine_parallelism']['median']:.2f}x", met=d["speedup"]["median"] >= 0.8 * reachable),
        Goal(name="distributed: same accuracies as one process", target="equal",
             measured="equal" if d["same_accuracy"] else "different", met=d["same_accuracy"]),
        Goal(name="distributed: every image read once in all", target=f"{d['images']} __getitem__ calls",
             measured=str(d["getitem_calls"][str(n)]), met=d["getitem_calls"][str(n)] == d["images"]),
    ]


def run(params: Params, ctx: Context) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result."""
    try:
        import stitchframe.evaluate  # noqa: F401
    except ImportError:
        goal = Goal(name="shared-prefix evaluation", target="stitchframe.evaluate", measured="missing", met=None,
                    note="this checkout has no stitchframe.evaluate")
        return {"spaces": [], "goals": [goal.to_dict()]}
    with num_threads(params.threads if not ctx.cuda else None):
        rows = [_run_space(sp, params, ctx) for sp in params.spaces]
    with num_threads(1):
        dist_row = _run_distributed(params.distributed, params, ctx) if params.distributed is not None else None
    goals = []
    for r in rows:
        goals += [
            Goal(name=f"{r['space']}: speed-up / FLOPs bound", target=">= 90%",
                 measured=f"{r['speedup']['median']:.2f}x of {r['bound']:.2f}x = {r['share_of_bound']:.0%}",
                 met=r["share_of_bound"] >= 0.9),
            Goal(name=f"{r['space']}: every image read once", target=f"{r['images']} __getitem__ calls",
                 measured=str(r["getitem_calls"]["shared"]), met=r["getitem_calls"]["shared"] == r["images"]),
            Goal(name=f"{r['space']}: same accuracies as one pass per route", target="equal",
                 measured="equal" if r["same_accuracy"] else "different", met=r["same_accuracy"]),
        ]
    if dist_row is not None:
        goals += _distributed_goals(dist_row)
    return {"batch": params.batch, "spaces": rows, "distributed": dist_row, "goals": [g.to_dict() for g in goals]}


def markdown(result: dict[str, Any]) -> str:
    """The markdown section of a result."""
    if not result["spaces"]:
        return "Not run: this checkout has no `stitchframe.evaluate`."
    rows = [[r["space"], r["routes"], r["images"], r["rounds"], f"{r['naive_block_forwards']} / {r['shared_block_forwards']}",
             f"{r['bound']:.2f}x", f"{r['speedup']['median']:.2f}x [{r['speedup']['min']:.2f}-{r['speedup']['max']:.2f}]",
             f"{r['share_of_bound']:.0%}", f"{r['getitem_calls']['shared']} / {r['getitem_calls']['per_route']}"]
            for r in result["spaces"]]
    text = (f"Anchors {describe_anchors(result['params']['anchors'])}, batch {result['batch']}. Bound: sum of route FLOPs / "
            f"FLOPs executed with sharing (both counted on one example).\n\n"
            + md_table(["space", "routes", "images", "rounds", "block forwards per image: per route / shared",
                        "FLOPs bound", "measured speed-up [min-max]", "of bound", "__getitem__: shared / per route"],
                       rows))
    d = result.get("distributed")
    if d:
        n = d["processes"]
        mp = d["machine_parallelism"]
        text += (f"\n\nDistributed evaluation on CPU (gloo, one thread per process), {d['space']}: {n} processes vs 1, "
                 f"{d['batches']} batches dealt out to the ranks (ideal: batches / most batches on one rank). Machine: "
                 f"how many times the work of one process {n} processes got done in the same time, measured in every "
                 f"round with a fixed one-thread matmul loop (on a shared machine other jobs take cores).\n\n"
                 + md_table(["space", "routes", "images", "rounds", "processes", "ideal", "machine [min-max]",
                             "measured speed-up [min-max]", "same accuracies", f"__getitem__: 1 / {n} processes"],
                            [[d["space"], d["routes"], d["images"], d["rounds"], n, f"{d['ideal']:.2f}x",
                              f"{mp['median']:.2f}x [{mp['min']:.2f}-{mp['max']:.2f}]",
                              f"{d['speedup']['median']:.2f}x [{d['speedup']['min']:.2f}-{d['speedup']['max']:.2f}]",
                              "yes" if d["same_accuracy"] else "no",
                              f"{d['getitem_calls']['1']} / {d['getitem_calls'][str(n)]}"]]))
    return text
