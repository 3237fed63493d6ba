"""Multi-process builds through ``torchrun``: process group, ranks, devices, rank-0 work.

``torchrun --nproc_per_node N ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup_distributed` reads them and
initialises the process group (``nccl`` on CUDA, ``gloo`` on CPU) unless one
exists already.  Without those variables everything runs as a single process
and every helper here is a no-op (or runs its work directly).

Work that only rank 0 may do (the output folder) goes through
:func:`on_main`: the other ranks wait for it and receive its result, or the
same error, so a mistake such as an existing output stops every rank with
one message instead of leaving them waiting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import torch
import torch.distributed as dist

from . import errors

__all__ = [
    "DistInfo",
    "setup_distributed",
    "dist_info",
    "is_main_process",
    "barrier",
    "cleanup_distributed",
    "process_group",
    "on_main",
    "broadcast_object",
    "all_gather_objects",
    "broadcast_state",
    "is_distributed",
]

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: Global rank (0 when not distributed).
        world_size: Number of processes.
        local_rank: Rank on this machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints and writes files."""
        return self.rank == 0

    def device(self, device: torch.device | str) -> torch.device:
        """``device``, with ``cuda`` resolved to this process's GPU (``cuda:LOCAL_RANK``)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
        return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def dist_info() -> DistInfo:
    """This process's rank and world size (from the process group, else the environment)."""
    local = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)
    return DistInfo(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1), local_rank=local)


def setup_distributed(device: torch.device | str | None = None) -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (idempotent).

    Args:
        device: The device training will use; ``cuda`` selects the ``nccl``
            backend and this process's GPU, anything else ``gloo``
            (default: ``cuda`` when available).

    Returns:
        The rank, world size and local rank.
    """
    info = dist_info()
    if info.world_size > 1 and dist.is_available() and not dist.is_initialized():
        use_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        info = dist_info()
    return info


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): the process that prints and writes files."""
    return dist_info().is_main


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup_distributed() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: torch.device | str | None = None) -> Iterator[DistInfo]:
    """:func:`setup_distributed` for the duration of a ``with`` block.

    The process group is destroyed on the way out only if this block
    started it (a caller's own group is left alone).
    """
    started = not (dist.is_available() and dist.is_initialized())
    info = setup_distributed(device)
    try:
        yield info
    finally:
        if started:
            cleanup_distributed()


def is_distributed() -> bool:
    """True when a process group of more than one process is initialised (collectives will run)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (``obj`` itself when not distributed); every rank must call it."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _rebuild_error(kind: str, message: str, extra: dict[str, Any]) -> BaseException:
    """Rank 0's error as the same stitchframe error class on another rank (else a StitchframeError)."""
    cls = getattr(errors, kind, None)
    if kind == "BuildInterrupted":
        exc: BaseException = errors.BuildInterrupted(message, signal_name=extra.get("signal_name", "SIGINT"))
    elif isinstance(cls, type) and issubclass(cls, errors.StitchframeError):
        exc = cls(message)
    elif kind == "KeyboardInterrupt":
        exc = KeyboardInterrupt()
    else:
        exc = errors.StitchframeError(f"rank 0 failed: {kind}: {message}")
    exc.on_rank_zero = True  # type: ignore[attr-defined]  # rank 0 reports it; the CLI stays quiet here
    return exc


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 alone while the other ranks wait; every rank returns its result.

    When ``fn`` raises on rank 0, every other rank raises the same kind of
    error with the same message (marked ``on_rank_zero``), so all ranks stop
    together.  The result travels by :func:`broadcast_object` (keep it small
    and plain).  Not distributed: simply ``fn()``.
    """
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any, Any] = ("ok", None, None)
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", fn(), None)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others know
            failure = exc
            outcome = ("error", type(exc).__name__, (str(exc), {"signal_name": getattr(exc, "signal_name", None)}))
    status, value, detail = broadcast_object(outcome)
    if failure is not None:
        raise failure
    if status == "error":
        message, extra = detail
        raise _rebuild_error(value, message, extra)
    return value


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank (no-op when not distributed)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if not isinstance(tensor, torch.Tensor):
                continue
            if tensor.is_contiguous():
                dist.broadcast(tensor, src=0)
            else:
                copy = tensor.contiguous()
                dist.broadcast(copy, src=0)
                tensor.copy_(copy)
