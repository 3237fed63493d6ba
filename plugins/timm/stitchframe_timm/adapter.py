"""The ``timm:`` anchor adapter: build a timm model, load its weights, cut it into an Anchor."""

from __future__ import annotations

from typing import Any

import attrs
import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from stitchframe import (
    Anchor,
    CheckpointError,
    Preprocess,
    SpecError,
    StitchframeError,
    UnknownNameError,
    anchor_name,
    hub_offline_mode,
)

from . import efficientnet, resnet, swin, vit
from .family import Family
from .names import check_timm_identifier
from .options import TimmOptions
from .weights import load_weights

__all__ = ["FAMILIES", "create_model", "family_of", "load_timm_anchor", "preprocess_of", "timm_anchor"]

#: The model families the adapter can cut, tried in order.
FAMILIES: tuple[Family, ...] = (vit.FAMILY, swin.FAMILY, resnet.FAMILY, efficientnet.FAMILY)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _model_kwargs(options: TimmOptions) -> dict[str, Any]:
    kwargs = dict(options.model_kwargs)
    for key in ("num_classes", "drop_path_rate", "img_size"):
        value = getattr(options, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def create_model(identifier: str, options: TimmOptions) -> nn.Module:
    """``timm.create_model`` with the adapter's options, as one-line errors.

    ``img_size`` is passed to the constructor of the models that take it
    (vision transformers, Swin) and dropped for CNNs, whose size is free.

    Raises:
        UnknownNameError: timm has no model of that name.
        SpecError: timm rejected ``model_kwargs``.
        CheckpointError: ``pretrained: true`` but timm could not fetch the weights.
    """
    check_timm_identifier(identifier)
    kwargs = _model_kwargs(options)
    source = f"timm:{identifier}"
    hub = bool(options.pretrained) or ":" in identifier
    offline = False
    try:
        # without a network the Hub client retries for about a minute: offline mode fails at once (cache only)
        with hub_offline_mode(enabled=hub) as offline:
            try:
                return timm.create_model(identifier, pretrained=options.pretrained, **kwargs)
            except TypeError as exc:
                if "img_size" not in kwargs or "img_size" not in str(exc):
                    raise
                kwargs.pop("img_size")
                return timm.create_model(identifier, pretrained=options.pretrained, **kwargs)
    except TypeError as exc:
        raise SpecError(
            f"timm model {source!r} rejected its arguments ({_first_line(exc)}); fix options.model_kwargs"
        ) from None
    except Exception as exc:  # noqa: BLE001 - timm and the Hub raise many types
        if hub:
            where = ("the Hugging Face Hub is unreachable or HF_HUB_OFFLINE is set, so only the local cache was "
                     "tried" if offline else "This needs the Hugging Face Hub or timm's local cache")
            raise CheckpointError(
                f"timm could not fetch {source!r} (pretrained: {options.pretrained}): {type(exc).__name__}: "
                f"{_first_line(exc)}. {where[0].upper()}{where[1:]}; offline, give options.weights a local file "
                "instead"
            ) from None
        raise StitchframeError(f"timm could not build {source!r}: {type(exc).__name__}: {_first_line(exc)}") from None


def family_of(model: nn.Module, source: str) -> Family:
    """The family that claims ``model``.

    Raises:
        SpecError: No family does; the message lists the supported ones.
    """
    for family in FAMILIES:
        if family.claims(model):
            return family
    supported = "; ".join(f.describe for f in FAMILIES)
    raise SpecError(
        f"{source!r} builds a timm {type(model).__name__}, which stitchframe-timm cannot cut into blocks; "
        f"supported families: {supported}. Pick a model of these families, or write an adapter plugin for it"
    )


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def preprocess_of(model: nn.Module, img_size: int | None = None) -> Preprocess:
    """Input preprocessing from timm's resolved data config (size, mean/std, interpolation, crop).

    Args:
        model: The timm model.
        img_size: Overrides the input resolution; default the size the model
            was built for (its patch embedding's) or its data config's.
    """
    cfg = resolve_model_data_config(model)
    channels = cfg["input_size"][0]
    if img_size is not None:
        size = (img_size, img_size)
    elif getattr(getattr(model, "patch_embed", None), "img_size", None) is not None:
        size = tuple(model.patch_embed.img_size)
    else:
        size = tuple(cfg["input_size"][1:])
    return Preprocess(
        modality="image",
        input_size=(channels, *size),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
    )


def load_timm_anchor(identifier: str, options: TimmOptions | None = None, registries: Any = None, *,
                     structure_only: bool = False) -> Anchor:
    """Build the anchor for ``timm:<identifier>``.

    Args:
        identifier: A timm model name (``deit_small_patch16_224``, with an
            optional pretrained tag) or a timm source (``hf-hub:org/name``).
        options: The adapter's options (default: :class:`TimmOptions`).
        structure_only: Build the model without its weights (``pretrained``
            and ``weights`` are ignored; stitchframe calls this on the meta
            device to rebuild an exported route).  timm builds a model name
            from its own registry offline; an ``hf-hub:`` source still needs
            its config, from the Hub cache.

    Returns:
        An :class:`~stitchframe.Anchor` in eval mode sharing the model's parameters.
    """
    options = options if options is not None else TimmOptions()
    if structure_only:
        options = attrs.evolve(options, pretrained=False, weights=None)
    source = f"timm:{identifier}"
    model = create_model(identifier, options)
    family = family_of(model, source)
    if options.weights is not None:
        load_weights(
            model,
            options.weights,
            key_map=options.key_map,
            classifier=_classifier_names(model),
            reinit_classifier=options.num_classes is not None,
            label=f"options.weights of {source!r}",
        )
    return timm_anchor(model, name=anchor_name(identifier), source=source, img_size=options.img_size, family=family)


def timm_anchor(
    model: nn.Module,
    *,
    name: str,
    source: str = "",
    img_size: int | None = None,
    family: Family | None = None,
) -> Anchor:
    """Cut an already built timm model into an Anchor, in eval mode.

    The anchor shares the model's parameters, so its anchor route computes
    exactly what ``model(x)`` does.

    Args:
        model: A timm model of one of the :data:`FAMILIES`.
        name: Anchor name (lowercase snake_case).
        source: Source string recorded on the anchor.
        img_size: Input resolution for the example input and preprocessing
            (default: the model's own).
        family: The family (default: found from the model's class).
    """
    family = family if family is not None else family_of(model, source or type(model).__name__)
    preprocess = preprocess_of(model, img_size)
    example = torch.randn(1, *preprocess.input_size, generator=torch.Generator().manual_seed(0))
    anchor = Anchor(
        name,
        **family.cut(model).anchor_kwargs(),
        example_inputs=example,
        model=model,
        preprocess=preprocess,
        source=source,
        family=family.name,
    )
    return anchor.eval()
