"""Safetensors I/O: SN-Nets, exported routes, atomic writes.

Only safetensors and JSON are ever read back: nothing here unpickles.
Writes go to a temporary file in the same directory and are renamed into
place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError

__all__ = ["atomic_write", "load_module_state", "read_json", "read_metadata", "save_module", "write_json"]

FORMAT_KEY = "stitchframe_format"


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``.

    The temporary file lives in the destination directory (same file system)
    and is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp creates 0600, and writers such as safetensors recreate the file 0600: give it the usual mode
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")

    return atomic_write(path, write)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON, raising :class:`CheckpointError` naming the file when it is missing or corrupt."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({exc}); the file is corrupt or truncated") from None


def _non_persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers ``state_dict`` leaves out (registered with ``persistent=False``), by state-dict name."""
    own = module.state_dict(keep_vars=True)
    return {name: b for name, b in module.named_buffers(remove_duplicate=False) if name not in own and b is not None}


def _unique_state(module: nn.Module, non_persistent: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with tensors sharing storage stored once; returns (tensors, aliases)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    state = module.state_dict()
    if non_persistent:
        state.update(_non_persistent_buffers(module))
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    return tensors, aliases


def save_module(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    kind: str,
    metadata: dict[str, Any] | None = None,
    non_persistent: bool = False,
) -> Path:
    """Save a module's state dict to safetensors, atomically.

    Args:
        module: The module.
        path: Destination ``.safetensors`` file.
        kind: Format tag stored in the header (``"snnet"``, ``"route"``, ``"checkpoint"``).
        metadata: JSON-serialisable values stored in the header.
        non_persistent: Also store the buffers ``state_dict`` leaves out
            (``persistent=False``: position ids, attention masks, rotary
            tables), so a module built on the meta device gets every tensor
            from the file; load with ``non_persistent=True``.
    """
    tensors, aliases = _unique_state(module, non_persistent)
    from . import __version__

    meta = {FORMAT_KEY: kind, "stitchframe_version": __version__, "aliases": json.dumps(aliases)}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, default=str)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors header metadata of a file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except FileNotFoundError:
        raise CheckpointError(f"Weights file {str(path)!r} does not exist") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"Weights file {str(path)!r} is not a readable safetensors file ({exc}); it is corrupt or truncated"
        ) from None


def load_module_state(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    kind: str | None = None,
    strict: bool = True,
    non_persistent: bool = False,
) -> dict[str, str]:
    """Load a safetensors file written by :func:`save_module` into ``module``.

    With ``non_persistent=True`` the file also fills the buffers
    ``state_dict`` leaves out (saved with ``non_persistent=True``); their
    values are not checked for being finite (masks may hold ``-inf``).

    Returns:
        The header metadata.

    Raises:
        CheckpointError: The file is missing, corrupt, of another kind, or its
            tensors do not match the module (names the file and the tensor).
    """
    meta = read_metadata(path)
    if kind is not None and meta.get(FORMAT_KEY) not in (None, kind):
        raise CheckpointError(f"{str(path)!r} holds a {meta.get(FORMAT_KEY)!r}, expected a {kind!r}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Weights file {str(path)!r} cannot be read ({exc}); it is corrupt or truncated") from None
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{str(path)!r}: corrupt 'aliases' metadata") from None
    for alias, target in aliases.items():
        if target in tensors:
            tensors[alias] = tensors[target]
    own = module.state_dict()
    extra = _non_persistent_buffers(module) if non_persistent else {}
    own.update(extra)
    for name, t in tensors.items():
        if name not in own:
            if strict:
                raise CheckpointError(
                    f"{str(path)!r} has tensor {name!r}, which the model lacks; the file was saved from a "
                    "different spec (compare spec hashes) or model"
                )
            continue
        if tuple(own[name].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{str(path)!r}: tensor {name!r} has shape {tuple(t.shape)}, the model expects {tuple(own[name].shape)}"
            )
        if name not in extra and (not torch.isfinite(t).all() if t.is_floating_point() else False):
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} holds NaN or infinite values")
    if strict:
        missing = sorted(set(own) - set(tensors))
        if missing:
            raise CheckpointError(
                f"{str(path)!r} lacks {len(missing)} tensor(s) the model needs, e.g. {missing[0]!r}; "
                "it was saved from a different spec or is incomplete"
            )
    module.load_state_dict({k: t for k, t in tensors.items() if k not in extra}, strict=False)
    if extra:
        with torch.no_grad():
            for name, t in tensors.items():
                if name in extra:
                    extra[name].copy_(t)
    return meta
