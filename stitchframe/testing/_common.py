"""Shared helpers of the conformance checks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["ConformanceError"]


class ConformanceError(AssertionError):
    """A plugin object breaks the stitchframe contract (raised by the ``check_*`` helpers)."""

    __module__ = "stitchframe.testing"  # where users import it from


def fail(message: str) -> None:
    """Raise :class:`ConformanceError` with ``message``."""
    raise ConformanceError(message)


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode, no grad; restore their modes afterwards."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(present, modes):
            m.train(mode)


def first_tensor(obj: Any, what: str) -> torch.Tensor:
    """The tensor to compare from a model output: a tensor, ``logits``, or the first element."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        if "logits" in obj:
            return first_tensor(obj["logits"], what)
        for value in obj.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(obj, (tuple, list)) and obj:
        return first_tensor(obj[0], what)
    raise ConformanceError(
        f"{what} returned {type(obj).__name__}, which holds no tensor to compare; return a tensor, "
        "a mapping with 'logits', or a tuple whose first element is the output"
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of two tensors."""
    return float((a.detach().float() - b.detach().float()).abs().max())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error of ``a`` against ``b`` (in float64)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def unique_params(*modules: nn.Module | None) -> dict[int, nn.Parameter]:
    """The parameters of ``modules`` by id, each once."""
    out: dict[int, nn.Parameter] = {}
    for m in modules:
        if m is not None:
            for p in m.parameters():
                out.setdefault(id(p), p)
    return out
