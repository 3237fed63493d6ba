"""Cheap checks of ``hf:`` and ``hf-config:`` sources, run by ``stitchframe validate`` (no torch, no transformers).

Where the model lives (:func:`resolve_location`): a local folder, a folder in
an installed package (``package:<package>/<folder>``) or a Hub id.  The
checks read ``config.json`` where it is on disk (a folder, or the local
Hugging Face cache for a Hub id) and reject a missing config or an
unsupported ``model_type``; a Hub id that is not cached passes unless
``HF_HUB_OFFLINE`` is set, since only the network could tell.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from stitchframe import SpecError

__all__ = ["SUPPORTED_MODEL_TYPES", "resolve_location", "check_hf_identifier", "check_hf_config_identifier"]

#: The ``model_type`` values the adapters can cut (the keys of :data:`stitchframe_transformers.families.FAMILIES`).
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "distilbert", "vit", "deit", "gpt2", "llama")
_PACKAGE = "package:"


def resolve_location(identifier: str, prefix: str = "hf") -> tuple[str, bool]:
    """Where a model or tokenizer lives: ``(path or hub id, is_local)``.

    Raises:
        SpecError: A ``package:`` package is not installed, or a path that looks
            local does not exist.
    """
    if identifier.startswith(_PACKAGE):
        package, _, sub = identifier[len(_PACKAGE) :].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise SpecError(
                f"{prefix}:{identifier}: Python package {package!r} is not installed; "
                f"install it or point at a folder ({prefix}:/path/to/model)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / sub
        if not path.exists():
            raise SpecError(f"{prefix}:{identifier}: {str(path)!r} does not exist inside package {package!r}")
        return str(path), True
    path = Path(identifier).expanduser()
    if path.exists():
        return str(path), True
    if identifier.startswith((".", "/", "~")) or "\\" in identifier or identifier.count("/") > 1:
        raise SpecError(f"{prefix}:{identifier}: local path {str(path)!r} does not exist")
    return identifier, False


def _check_model_type(config_file: Path, source: str) -> None:
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise SpecError(f"{source}: {str(config_file)!r} is not a readable JSON config "
                        f"({type(exc).__name__})") from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SpecError(f"{source}: model type {model_type!r} (from {str(config_file)!r}) is not supported by "
                        f"stitchframe-transformers; supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}.")


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cached_config(repo_id: str, revision: str | None) -> Path | None:
    if importlib.util.find_spec("huggingface_hub") is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an id the cache cannot parse: left to the loader's own error
        return None
    return Path(found) if isinstance(found, str) else None


def check_hf_identifier(identifier: str, options: Any = None) -> None:
    """The ``hf`` adapter's identifier check: a config on disk with a supported model type, or a Hub id.

    Raises:
        SpecError: A missing package, folder or ``config.json``, an unsupported
            model type, or a Hub id not in the local cache while offline.
    """
    source = f"hf:{identifier}"
    location, local = resolve_location(identifier)
    if local:
        folder = Path(location)
        config = folder / "config.json" if folder.is_dir() else folder
        if not config.is_file():
            raise SpecError(f"{source}: {str(folder)!r} holds no config.json; point at a folder saved with "
                            "save_pretrained (config.json and weights)")
        _check_model_type(config, source)
        return
    cached = _cached_config(location, getattr(options, "revision", None))
    if cached is not None:
        _check_model_type(cached, source)
    elif _offline():
        raise SpecError(f"{source}: {location!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                        f"download it (`hf download {location} --local-dir DIR`) and use hf:DIR")


def check_hf_config_identifier(identifier: str, options: Any = None) -> None:
    """The ``hf-config`` adapter's identifier check: a config file or folder, or a supported ``model_type``.

    Raises:
        SpecError: A path that does not exist or holds no config, or an
            unsupported model type.
    """
    source = f"hf-config:{identifier}"
    fields = dict(getattr(options, "config", None) or {})
    path = Path(identifier).expanduser() if identifier else None
    if path is not None and path.exists():
        config = path / "config.json" if path.is_dir() else path
        if not config.is_file():
            raise SpecError(f"{source}: {str(path)!r} holds no config.json")
        _check_model_type(config, source)
        return
    if identifier.startswith((".", "/", "~")) or "/" in identifier or identifier.endswith(".json"):
        raise SpecError(f"{source}: local path {str(path)!r} does not exist")
    model_type = fields.get("model_type") or identifier
    if not model_type:
        raise SpecError("hf-config: give a model type (hf-config:bert), a config.json or a folder holding one")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SpecError(f"{source}: model type {model_type!r} is not supported by stitchframe-transformers; "
                        f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}.")
