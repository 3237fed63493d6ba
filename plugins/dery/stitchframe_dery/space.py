"""The ``dery`` stitch space: Deep Model Reassembly (Yang et al., NeurIPS 2022) on stitchframe.

``routes(anchors, can_stitch, context)``:

1. **Probe.**  Inputs come from the engine (``context.probe``: the build's
   training data) or, without data, are seeded noise shaped like the
   anchors' ``example_inputs`` (``probe`` option).
2. **Similarity.**  Linear CKA of pooled activations between every cut point
   of every anchor (:mod:`.similarity`).
3. **Partition.**  Each anchor is cut into K stages whose boundaries match
   across anchors by CKA (:mod:`.partition`).
4. **Search.**  Assemblies (one stage per position, from any anchor) within
   the parameter/FLOPs budgets are ranked by training-free proxies computed
   on the assembled network with its stitching layers fitted by least
   squares on the probe (:mod:`.proxies`, :mod:`.search`).
5. **Routes.**  The anchors (ordered by FLOPs) and then the best ``top``
   assemblies of every budget, in budget order, each once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from stitchframe import (
    Anchor,
    AnchorsSpace,
    CanStitch,
    Conv1x1Stitch,
    LinearStitch,
    Route,
    SpaceContext,
    SpecError,
    StitchLayer,
    StitchSpace,
    batch_inputs,
    by_flops,
    choose_layer,
)

from .options import DeryOptions
from .partition import Partition, eligible, partition
from .search import Assembly, Reassembler, Scorer, finite, search_assemblies
from .similarity import Similarity, similarity

__all__ = ["DeryResult", "DerySpace", "probe_inputs", "synthetic_probe"]

_WHERE = "stitch.space_options"


@attrs.frozen
class DeryResult:
    """Everything the ``dery`` space computed, for inspection and reports.

    Attributes:
        probe: Where the probe came from: ``given`` or ``synthetic``.
        similarity: CKA between all cut points.
        partition: The K-stage partition.
        assemblies: The chosen assemblies of every budget, best first.
        anchors: The anchors, ordered by FLOPs.
    """

    probe: str
    similarity: Similarity
    partition: Partition
    assemblies: list[list[Assembly]]
    anchors: list[Anchor]

    def routes(self, include_anchors: bool = True) -> list[Route]:
        """The space's routes: anchors first (if included), then every budget's assemblies, each once."""
        out: list[Route] = list(AnchorsSpace().routes(self.anchors, None)) if include_anchors else []
        seen = set(out)
        for per_budget in self.assemblies:
            for a in per_budget:
                if a.route in seen:
                    continue
                seen.add(a.route)
                meta = {
                    "kind": "dery", "budget": a.budget, "rank": a.rank, "stages": list(a.stages),
                    "probe": self.probe, **{k: finite(v) for k, v in a.scores.items()},
                }
                out.append(Route(a.route.segments, meta=meta))
        return out


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        return _batch_size(next(iter(inputs.values())))
    if isinstance(inputs, (list, tuple)):
        return _batch_size(inputs[0])
    raise SpecError(f"dery: cannot tell the batch size of probe inputs of type {type(inputs).__name__}")


def _head(inputs: Any, n: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[:n]
    if isinstance(inputs, Mapping):
        return type(inputs)({k: _head(v, n) for k, v in inputs.items()})
    return type(inputs)(_head(v, n) for v in inputs)


def synthetic_probe(anchors: Sequence[Anchor], batches: int, samples: int, seed: int) -> list[torch.Tensor]:
    """Seeded standard-normal inputs shaped like the anchors' ``example_inputs`` (tensor inputs only).

    Raises:
        SpecError: The anchors take non-tensor inputs (text) or disagree on the input shape.
    """
    shapes = {a.name: tuple(a.example_inputs.shape[1:]) for a in anchors if isinstance(a.example_inputs, torch.Tensor)}
    if len(shapes) != len(anchors):
        raise SpecError(
            f"{_WHERE}.probe: the dery space cannot make synthetic inputs for non-tensor (e.g. text) anchors; "
            "build with a data section so it gets a probe, or pass probe= to build_snnet/assemble"
        )
    if len(set(shapes.values())) > 1:
        raise SpecError(
            f"{_WHERE}.probe: the anchors expect different input shapes {shapes}; give the dery space probe data "
            "at one common size (build with a data section, or pass probe= to build_snnet/assemble)"
        )
    shape = next(iter(shapes.values()))
    dtype = anchors[0].example_inputs.dtype
    g = torch.Generator().manual_seed(seed)
    per = -(-samples // batches)
    return [torch.randn(per, *shape, generator=g).to(dtype) for _ in range(batches)]


def probe_inputs(anchors: Sequence[Anchor], context: SpaceContext, options: DeryOptions, seed: int) -> tuple[list, str]:
    """The probe batches (model inputs only, ``probe_samples`` at most) and where they came from.

    Raises:
        SpecError: ``probe: given`` without probe data, or synthetic inputs that cannot be made.
    """
    given = context.probe if options.probe != "synthetic" else None
    if given is None:
        if options.probe == "given":
            raise SpecError(
                f"{_WHERE}.probe: 'given' but no probe data reached the dery space; build with a data section "
                "(stitchframe build), pass probe= to build_snnet/assemble, or set probe: auto"
            )
        return synthetic_probe(anchors, options.probe_batches, options.probe_samples, seed), "synthetic"
    out, left = [], options.probe_samples
    for batch in itertools.islice(given, options.probe_batches):
        inputs = batch_inputs(batch)
        n = min(_batch_size(inputs), left)
        out.append(_head(inputs, n))
        left -= n
        if left <= 0:
            break
    if not out:
        raise SpecError(f"{_WHERE}.probe: the probe data given to the dery space holds no batch")
    return out, "given"


def _default_stitch(anchors: Sequence[Anchor]):
    """Without an engine context: the ``auto`` layer (conv1x1 between maps, linear otherwise)."""
    by_name = {a.name: a for a in anchors}

    def make(src: str, p: int, dst: str, q: int) -> StitchLayer | None:
        s, d = by_name[src].graph.spec_at(p), by_name[dst].graph.spec_at(q)
        cls = Conv1x1Stitch if choose_layer(s, d) == "conv1x1" else LinearStitch
        return cls(s, d) if cls.supports(s, d) is None else None

    return make


class DerySpace(StitchSpace):
    """DeRy-style reassembly: K CKA-aligned stages per anchor, assemblies ranked by training-free proxies."""

    Options = DeryOptions

    def routes(self, anchors: Sequence[Anchor], can_stitch: CanStitch,
               context: SpaceContext | None = None) -> Iterable[Route]:
        """Yield the anchors, then the chosen assemblies (see the module docstring)."""
        yield from self.search(anchors, can_stitch, context).routes(self.options.include_anchors)

    def search(self, anchors: Sequence[Anchor], can_stitch: CanStitch,
               context: SpaceContext | None = None) -> DeryResult:
        """Run probe, similarity, partition and search; return everything they found."""
        o = self.options
        context = context if context is not None else SpaceContext(anchors=list(anchors))
        seed = o.seed if o.seed is not None else context.seed
        fit, _ = eligible(anchors, o.stages, o.reference, _WHERE)  # option errors before any work
        probe, source = probe_inputs(fit, context, o, seed)
        sim = similarity(fit, probe, o.token_pool)
        part = partition(anchors, sim, o.stages, reference=o.reference, align_rounds=o.align_rounds, where=_WHERE)
        make_stitch = context.make_stitch or _default_stitch(anchors)
        reassembler = Reassembler(anchors, part, can_stitch, make_stitch, context.final_norm)
        first = probe[0]
        n = min(_batch_size(first), o.score_samples)
        scorer = Scorer(reassembler, probe, (_head(first, n), n), o.proxies, o.stitch_init)
        assemblies = search_assemblies(reassembler, scorer, o, seed)
        return DeryResult(source, sim, part, assemblies, by_flops(anchors))
