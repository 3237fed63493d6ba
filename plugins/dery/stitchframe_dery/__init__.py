"""stitchframe-dery: DeRy-style reassembly of heterogeneous model zoos as the ``dery`` stitch space.

Deep Model Reassembly (Yang et al., NeurIPS 2022) dissects a zoo of
pretrained networks (CNNs, ViTs, Swin) into stages, groups stages into
equivalence sets by functional similarity (linear CKA), and reassembles new
networks from one stage per position under parameter/FLOPs budgets, ranked
by training-free proxies.  Here each reassembled network is an ordinary
multi-segment route, so calibration, training, evaluation and export apply
unchanged.

Use it in a spec::

    stitch:
      space: dery
      space_options: {stages: 4, budgets: [{max_flops: 2.0e9}, {max_flops: 4.0e9}]}

The plugin registers through ``stitchframe_register_stitch_spaces`` only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import stitchframe

from .options import Budget, DeryOptions

if TYPE_CHECKING:
    from .partition import Partition, partition
    from .proxies import jacov_score, mean_ranks, naswot_from_kernel, naswot_kernel
    from .search import Assembly
    from .similarity import Similarity, linear_cka, similarity
    from .space import DeryResult, DerySpace

# torch and the heavy modules load on first use (PEP 562): registering the plugin and validating
# specs import neither
_LAZY = {
    "Partition": "partition",
    "partition": "partition",
    "jacov_score": "proxies",
    "mean_ranks": "proxies",
    "naswot_from_kernel": "proxies",
    "naswot_kernel": "proxies",
    "Assembly": "search",
    "Similarity": "similarity",
    "linear_cka": "similarity",
    "similarity": "similarity",
    "DeryResult": "space",
    "DerySpace": "space",
}

__version__ = "0.1.0"

__all__ = [
    "Assembly",
    "Budget",
    "DeryOptions",
    "DeryResult",
    "DerySpace",
    "Partition",
    "Similarity",
    "jacov_score",
    "linear_cka",
    "mean_ranks",
    "naswot_from_kernel",
    "naswot_kernel",
    "partition",
    "similarity",
]


@stitchframe.hookimpl
def stitchframe_register_stitch_spaces(register) -> None:
    """Register the ``dery`` stitch space."""
    register("dery", "stitchframe_dery.space:DerySpace", options=DeryOptions)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
