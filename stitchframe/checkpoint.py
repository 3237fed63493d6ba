"""Training checkpoints: safetensors for tensors, JSON for everything else, switched atomically.

A checkpoint directory holds one folder per saved step and a ``latest``
pointer::

    checkpoints/
      latest                  {"checkpoint": "step-00000200", "step": 200}
      step-00000100/          model.safetensors  state.safetensors  state.json
      step-00000200/

* ``model.safetensors`` - the SN-Net's state dict (:func:`stitchframe.save_module`);
* ``state.safetensors`` - optimizer state tensors and the torch/CUDA RNG states;
* ``state.json`` - step, epoch, data position, sampler and scheduler state,
  Python/NumPy RNG states, loss history, the train spec and its hash, and the
  optimizer's non-tensor state (its param groups).

A new checkpoint is written into a hidden temporary folder, flushed, renamed
to ``step-N`` and only then does ``latest`` (rewritten atomically) point at
it; a crash at any moment leaves ``latest`` naming a complete checkpoint.
Only the newest ``keep`` folders are kept.  Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError
from .io import FORMAT_KEY, atomic_write, load_module_state, read_json, save_module, write_json

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedCheckpoint",
    "save_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "clear_checkpoints",
    "capture_rng",
    "restore_rng",
]

#: Version tag of the ``state.json`` layout.
CHECKPOINT_FORMAT = "stitchframe-checkpoint/1"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@attrs.frozen(kw_only=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read besides the weights it loaded in place.

    Attributes:
        path: The checkpoint folder.
        state: The JSON state (step, epoch, ...; see the module docs).
        rng_tensors: Torch and CUDA RNG states, for :func:`restore_rng`.
    """

    path: Path
    state: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]


# ---------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The process's RNG states as ``(tensors, json)`` (torch, CUDA, Python, NumPy)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    data = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, data


def restore_rng(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any]) -> None:
    """Restore RNG states saved by :func:`capture_rng`."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors, key=_cuda_index) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "python" in data:
        version, internal, gauss = data["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in data:
        kind, keys, pos, has_gauss, cached = data["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _cuda_index(key: str) -> int:
    return int(key.rsplit(".", 1)[1]) if key.startswith("rng.cuda.") else -1


# ---------------------------------------------------------------------------
# optimizer state <-> tensors + JSON
# ---------------------------------------------------------------------------
def _split_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def _join_optimizer(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t
    for idx, values in data.get("state", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": data["param_groups"]}


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _pointer(directory: Path) -> str | None:
    p = directory / LATEST
    if not p.exists():
        return None
    data = read_json(p)
    name = data.get("checkpoint") if isinstance(data, dict) else None
    if not isinstance(name, str) or not _STEP_DIR.match(name):
        raise CheckpointError(f"{str(p)!r} does not name a checkpoint folder (got {data!r}); delete it to start over")
    return name


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint folders in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint of ``step`` and point ``latest`` at it, atomically.

    Saving a step that ``latest`` already names is a no-op.

    Args:
        directory: The checkpoint directory (created if missing).
        step: Optimizer steps done.
        model: The module whose state dict is saved (not a DDP wrapper).
        optimizer: Its optimizer.
        state: JSON-ready training state (stored in ``state.json``).
        keep: How many checkpoint folders to keep (at least 1).

    Returns:
        The new checkpoint folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = directory / name
    if _pointer(directory) == name and final.is_dir():
        return final
    for stale in directory.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in directory.glob(f".{LATEST}.*.tmp"):  # a pointer write a crash interrupted
        stale.unlink(missing_ok=True)
    opt_tensors, opt_data = _split_optimizer(optimizer)
    rng_tensors, rng_data = capture_rng()
    tensors = {**opt_tensors, **rng_tensors}
    data = {**dict(state), "format": CHECKPOINT_FORMAT, "step": step, "optimizer": opt_data, "rng": rng_data}
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=directory))
    try:
        save_module(model, tmp / "model.safetensors", kind="checkpoint", metadata={"step": step})
        meta = {FORMAT_KEY: "checkpoint_state"}
        atomic_write(tmp / "state.safetensors", lambda p: save_file(tensors, p, metadata=meta))
        write_json(tmp / "state.json", data)
        _fsync_dir(tmp)
        if final.exists():  # left by an earlier run; ``latest`` does not name it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(directory / LATEST, {"checkpoint": name, "step": step})
    _fsync_dir(directory)
    _prune(directory, max(1, keep), name)
    return final


def _prune(directory: Path, keep: int, current: str) -> None:
    folders = [p for p in list_checkpoints(directory) if p.name != current]
    for old in folders[: max(0, len(folders) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def clear_checkpoints(directory: str | os.PathLike[str]) -> int:
    """Remove ``latest`` and every checkpoint folder in ``directory``; returns how many folders."""
    directory = Path(directory)
    (directory / LATEST).unlink(missing_ok=True)
    folders = list_checkpoints(directory)
    for p in folders:
        shutil.rmtree(p, ignore_errors=True)
    return len(folders)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The folder ``latest`` names, or ``None`` when ``directory`` has no checkpoint.

    Raises:
        CheckpointError: ``latest`` is corrupt or names a missing folder.
    """
    directory = Path(directory)
    name = _pointer(directory)
    if name is None:
        return None
    path = directory / name
    if not path.is_dir():
        raise CheckpointError(
            f"{str(directory / LATEST)!r} names {name!r}, which does not exist; "
            "the checkpoint directory was modified by hand, delete 'latest' to start over"
        )
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> LoadedCheckpoint:
    """Load a checkpoint folder into ``model`` (and ``optimizer``) in place.

    Args:
        path: A checkpoint folder, or a checkpoint directory (its ``latest`` is used).
        model: The module saved (same architecture).
        optimizer: Its optimizer, built with the same parameter groups.

    Returns:
        The JSON state and the RNG tensors.

    Raises:
        CheckpointError: Missing, corrupt or mismatched files (names the file).
    """
    path = Path(path)
    if (path / LATEST).exists() or not (path / "state.json").exists():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{str(path)!r} holds no checkpoint ('latest' or state.json is missing)")
        path = found
    state = read_json(path / "state.json")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path / 'state.json')!r} is not a {CHECKPOINT_FORMAT} checkpoint")
    load_module_state(model, path / "model.safetensors", kind="checkpoint")
    tensor_file = path / "state.safetensors"
    try:
        tensors = load_file(str(tensor_file))
    except FileNotFoundError:
        raise CheckpointError(f"{str(tensor_file)!r} does not exist; the checkpoint is incomplete") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{str(tensor_file)!r} cannot be read ({exc}); it is corrupt or truncated") from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict(_join_optimizer(tensors, state["optimizer"]))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{str(path)!r}: the optimizer state does not fit this model's parameter groups ({exc}); "
                "the checkpoint comes from a different spec (freeze, anchors or stitch space changed)"
            ) from None
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return LoadedCheckpoint(path=path, state=state, rng_tensors=rng)
