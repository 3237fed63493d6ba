"""Options of the ``dery`` stitch space (``stitch.space_options`` in a spec)."""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["PROXIES", "Budget", "DeryOptions"]

_v = attrs.validators

#: Training-free proxies the search can rank assemblies by.
PROXIES = ("naswot", "jacov")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _limit(text: str):
    return attrs.field(default=None, validator=_v.optional([_v.instance_of((int, float)), _v.gt(0)]), metadata=_help(text))


@attrs.frozen(kw_only=True)
class Budget:
    """One resource budget: the search returns the best ``top`` assemblies within it."""

    max_params: float | None = _limit(
        "Most parameters an assembly may have, stitching layers included, as the route table counts them "
        "(null: no limit)."
    )
    max_flops: float | None = _limit(
        "Most FLOPs (batch 1, at the anchors' example input; torch's convention, a multiply-add is 2) "
        "as the route table counts them (null: no limit)."
    )


@attrs.frozen(kw_only=True)
class DeryOptions:
    """Options of the ``dery`` space: similarity, partition, search and proxies."""

    stages: int = attrs.field(
        default=4,
        validator=[_v.instance_of(int), _v.ge(2)],
        metadata=_help("K: every anchor is cut into this many stages; an assembly takes one stage per position."),
    )
    max_params: float | None = _limit("Parameter limit of every assembly (also caps every entry of budgets).")
    max_flops: float | None = _limit("FLOPs limit of every assembly (also caps every entry of budgets).")
    budgets: list[Budget] = attrs.field(
        factory=list,
        metadata=_help("Several budgets, each giving its own best assemblies (empty: one budget from max_params/max_flops)."),
    )
    top: int = attrs.field(
        default=1, validator=[_v.instance_of(int), _v.ge(1)], metadata=_help("Assemblies kept per budget, best first.")
    )
    proxies: tuple[str, ...] = attrs.field(
        default=("naswot", "jacov"),
        converter=tuple,
        validator=[_v.min_len(1), _v.deep_iterable(_v.in_(PROXIES))],
        metadata=_help(
            "Training-free proxies ranking the assemblies: naswot (Hamming kernel of activation patterns) and "
            "jacov (Jacobian covariance); several are combined by their mean rank."
        ),
    )
    search: Literal["auto", "enumerate", "evolution"] = attrs.field(
        default="auto",
        validator=_v.in_(("auto", "enumerate", "evolution")),
        metadata=_help("enumerate every assembly, evolve a population, or auto: enumerate up to max_enumerate."),
    )
    max_enumerate: int = attrs.field(
        default=256,
        validator=[_v.instance_of(int), _v.ge(1)],
        metadata=_help("auto enumerates when the space holds at most this many assemblies, else evolves."),
    )
    population: int = attrs.field(
        default=16, validator=[_v.instance_of(int), _v.ge(2)], metadata=_help("Evolution: population size.")
    )
    generations: int = attrs.field(
        default=8, validator=[_v.instance_of(int), _v.ge(0)], metadata=_help("Evolution: generations after the first.")
    )
    seed: int | None = attrs.field(
        default=None, metadata=_help("Seed of the synthetic probe and the evolution (null: the spec's seed).")
    )
    reference: str | None = attrs.field(
        default=None,
        metadata=_help("Anchor whose K stages of about equal FLOPs the others are aligned to (null: the costliest)."),
    )
    align_rounds: int = attrs.field(
        default=2,
        validator=[_v.instance_of(int), _v.ge(0)],
        metadata=_help("Rounds in which every anchor but the reference moves its cut points to match all the others by CKA."),
    )
    token_pool: Literal["patches", "all"] = attrs.field(
        default="patches",
        validator=_v.in_(("patches", "all")),
        metadata=_help("Pooling of token activations for CKA: mean over patch tokens (prefix tokens left out) or all."),
    )
    probe: Literal["auto", "given", "synthetic"] = attrs.field(
        default="auto",
        validator=_v.in_(("auto", "given", "synthetic")),
        metadata=_help(
            "Probe inputs: given (data from the build; an error without), synthetic (seeded noise shaped like "
            "the anchors' example inputs), or auto: given when there is data, else synthetic."
        ),
    )
    probe_batches: int = attrs.field(
        default=4, validator=[_v.instance_of(int), _v.ge(1)], metadata=_help("Probe batches read at most.")
    )
    probe_samples: int = attrs.field(
        default=256,
        validator=[_v.instance_of(int), _v.ge(4)],
        metadata=_help("Probe samples used at most (CKA Gram matrices are samples x samples)."),
    )
    score_samples: int = attrs.field(
        default=32,
        validator=[_v.instance_of(int), _v.ge(2)],
        metadata=_help("Samples (from the first probe batch) the proxies score each assembly on."),
    )
    stitch_init: Literal["lstsq", "random"] = attrs.field(
        default="lstsq",
        validator=_v.in_(("lstsq", "random")),
        metadata=_help("Stitching layers of scored assemblies: least squares on the probe, or their random init."),
    )
    mixed_only: bool = attrs.field(
        default=True, metadata=_help("Search only assemblies taking stages from at least two anchors.")
    )
    include_anchors: bool = attrs.field(default=True, metadata=_help("Include each anchor alone."))
