"""Multi-process training through ``torchrun``: process group, ranks, devices.

``torchrun --nproc_per_node N ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup_distributed` reads them and
initialises the process group (``nccl`` on CUDA, ``gloo`` on CPU) unless one
exists already.  Without those variables everything runs as a single process
and every helper here is a no-op.
"""

from __future__ import annotations

import os

import attrs
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup_distributed", "dist_info", "is_main_process", "barrier", "cleanup_distributed"]


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
