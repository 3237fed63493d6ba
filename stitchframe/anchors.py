"""Anchors: pretrained models cut into a stem, ordered blocks and a head.

An adapter (registered by a plugin under a source prefix) builds an
:class:`Anchor` from the original model's own submodules, so the anchor shares
the model's parameters and its anchor route reproduces the model exactly.

Calling convention:

* ``stem(inputs)``, ``block(x)``, ``norm(x)``, ``head(x)`` for families that
  need nothing but the hidden state;
* when the adapter passes ``prepare``, the engine builds a per-input context
  once with ``ctx = prepare(inputs)`` and calls ``stem(inputs, ctx)``,
  ``block(x, ctx)`` and ``head(x, ctx)`` (attention masks, rotary tables,
  Swin grids).  ``norm`` is always called with ``x`` alone.

``norm`` is the final normalisation before the head, kept apart so a spec can
choose whether stitched routes re-enter it (``stitch.final_norm``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import StitchframeError
from .graph import ActivationSpec, BlockGraph, BlockInfo

__all__ = ["Anchor", "Preprocess", "count_flops", "anchor_name"]

_aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: FLOP formulas torch's counter lacks: fused attention on CPU is otherwise
#: counted as zero (DeiT-Ti reads 2.15 GFLOPs instead of 2.51).
_EXTRA_FLOP_FORMULAS = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` under :class:`torch.utils.flop_counter.FlopCounterMode`.

    Fused CPU attention is counted too.  FLOPs follow torch's convention (a
    multiply-add is 2 FLOPs; the SN-Net papers' "FLOPs" are multiply-adds,
    i.e. half of this number).

    Returns:
        ``(result, flops)``.
    """
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops())


def anchor_name(identifier: str) -> str:
    """A valid anchor name from a source identifier (``org/Model-v1.2`` -> ``model_v1_2``)."""
    base = identifier.rstrip("/").split("/")[-1].split(":")[-1].lower()
    base = re.sub(r"[^a-z0-9_]+", "_", base).strip("_")
    if not base or not base[0].isalpha():
        base = f"anchor_{base}"
    return base


@attrs.frozen(kw_only=True)
class Preprocess:
    """How an anchor expects its inputs, used to build data transforms.

    Attributes:
        modality: ``"image"``, ``"text"`` or ``"other"``.
        input_size: ``(C, H, W)`` for images.
        mean: Per-channel mean (images, on the 0..1 scale).
        std: Per-channel std.
        interpolation: Resize interpolation (``"bilinear"``, ``"bicubic"``).
        crop_pct: Centre-crop fraction for evaluation.
        tokenizer: Tokenizer id or folder for text anchors.
        max_length: Maximum sequence length for text.
    """

    modality: str = "image"
    input_size: tuple[int, int, int] | None = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    tokenizer: str | None = None
    max_length: int | None = None


def _per_position(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)) and not (what == "grid" and len(value) == 2 and isinstance(value[0], int)):
        if len(value) != n:
            raise StitchframeError(f"Anchor {what} list has {len(value)} entries, expected {n} (one per position)")
        return list(value)
    return [value] * n


class Anchor(nn.Module):
    """A pretrained model as stem, blocks, optional final norm, and head.

    Args:
        name: Anchor name (lowercase; used in route strings and weight keys).
        stem: Module turning raw inputs into the first activation.
        blocks: The ordered blocks; stitches go between them.
        head: Module turning the last activation into the output.
        norm: Final normalisation applied before ``head`` (optional).
        prepare: Builds the per-input context (a callable or an
            ``nn.Module``); when given, stem/blocks/head receive it.
        layout: Activation layout at every position (one value, or one per
            position ``0..depth``).
        prefix: Prefix tokens per position (``tokens`` layout).
        grid: Grid per position for non-square ``tokens`` layouts.
        stages: Stage index of the stem and every block (``depth + 1`` values).
        example_inputs: Inputs (batch 1) used to trace shapes and FLOPs.
        variable_length: Sequence positions have a variable length (text).
        model: The original model, only to record module paths (not kept).
        preprocess: Input preprocessing the anchor expects.
        source: The source string it was loaded from.
        family: Model family name, for reports.
        structure: ``(source, options)`` that build this anchor's modules
            again through :func:`stitchframe.load_anchor` with
            ``structure_only=True``, without weight files or network (an
            adapter whose structure needs a file, such as a Hugging Face
            ``config.json``, gives a source that carries it inline).  Default:
            the source and options the anchor was loaded from.
    """

    def __init__(
        self,
        name: str,
        *,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        norm: nn.Module | None = None,
        prepare: Callable[[Any], Any] | nn.Module | None = None,
        layout: str | Sequence[str] = "tokens",
        prefix: int | Sequence[int] = 0,
        grid: tuple[int, int] | Sequence[tuple[int, int] | None] | None = None,
        stages: Sequence[int] | None = None,
        example_inputs: Any = None,
        variable_length: bool = False,
        model: nn.Module | None = None,
        preprocess: Preprocess | None = None,
        source: str = "",
        family: str = "",
        structure: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if not re.match(r"^[a-z][a-z0-9_]*$", name):
            raise StitchframeError(f"Anchor name {name!r} must be lowercase snake_case; try {anchor_name(name)!r}")
        if len(blocks) == 0:
            raise StitchframeError(f"Anchor {name!r} has no blocks; an adapter must cut the model into blocks")
        self.name = name
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.head = head
        if isinstance(prepare, nn.Module):
            self.context = prepare
        else:
            self.context = None
            self._prepare_fn = prepare
        self.uses_context = prepare is not None
        n = len(blocks) + 1
        self.layouts = _per_position(layout, n, "layout")
        self.prefixes = _per_position(prefix, n, "prefix")
        self.grids = _per_position(grid, n, "grid")
        self.stages = list(stages) if stages is not None else [0] * n
        if len(self.stages) != n:
            raise StitchframeError(f"Anchor {name!r}: stages has {len(self.stages)} entries, expected {n}")
        self.example_inputs = example_inputs
        self.variable_length = variable_length
        self.preprocess = preprocess or Preprocess()
        self.source = source
        self.family = family
        self.structure = (structure[0], dict(structure[1])) if structure is not None else None
        self._paths = self._module_paths(model)
        self._graph: BlockGraph | None = None

    # -- running -------------------------------------------------------
    def prepare(self, inputs: Any) -> Any:
        """Build the per-input context (``None`` for context-free families)."""
        if self.context is not None:
            return self.context(inputs)
        if self._prepare_fn is not None:
            return self._prepare_fn(inputs)
        return None

    def run_stem(self, inputs: Any, ctx: Any = None) -> torch.Tensor:
        """Run the stem."""
        return self.stem(inputs, ctx) if self.uses_context else self.stem(inputs)

    def run_blocks(self, x: torch.Tensor, start: int, end: int, ctx: Any = None) -> torch.Tensor:
        """Run blocks ``start..end-1``."""
        if self.uses_context:
            for blk in self.blocks[start:end]:
                x = blk(x, ctx)
        else:
            for blk in self.blocks[start:end]:
                x = blk(x)
        return x

    def run_head(self, x: torch.Tensor, ctx: Any = None, *, norm: bool = True) -> Any:
        """Run the final norm (unless ``norm=False``) and the head."""
        if norm and self.norm is not None:
            x = self.norm(x)
        return self.head(x, ctx) if self.uses_context else self.head(x)

    def forward(self, inputs: Any) -> Any:
        """The anchor route: the original model's computation."""
        ctx = self.prepare(inputs)
        x = self.run_stem(inputs, ctx)
        x = self.run_blocks(x, 0, len(self.blocks), ctx)
        return self.run_head(x, ctx)

    def activations(self, inputs: Any, positions: Sequence[int]) -> dict[int, torch.Tensor]:
        """Activations at the given cut positions, running only as far as needed."""
        wanted = set(positions)
        out: dict[int, torch.Tensor] = {}
        if not wanted:
            return out
        ctx = self.prepare(inputs)
        x = self.run_stem(inputs, ctx)
        if 0 in wanted:
            out[0] = x
        for i in range(max(wanted)):
            x = self.run_blocks(x, i, i + 1, ctx)
            if i + 1 in wanted:
                out[i + 1] = x
        return out

    @property
    def depth(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    # -- graph ---------------------------------------------------------
    @property
    def graph(self) -> BlockGraph:
        """The block graph, traced once on ``example_inputs`` (batch 1)."""
        if self._graph is None:
            self._graph = self._trace()
        return self._graph

    def _module_paths(self, model: nn.Module | None) -> dict[str, str]:
        names: dict[int, str] = {}
        if model is not None:
            for mname, mod in model.named_modules():
                names.setdefault(id(mod), mname)
        paths = {"stem": _path_of(self.stem, names, "stem"), "head": _path_of(self.head, names, "head")}
        for i, blk in enumerate(self.blocks):
            paths[f"blocks[{i}]"] = _path_of(blk, names, f"blocks.{i}")
        return paths

    def _spec(self, x: torch.Tensor, pos: int) -> ActivationSpec:
        try:
            return ActivationSpec.infer(
                x,
                self.layouts[pos],
                prefix=self.prefixes[pos],
                grid=self.grids[pos],
                variable_length=self.variable_length,
            )
        except Exception as exc:
            raise StitchframeError(
                f"Anchor {self.name!r}: the activation at position {pos} has shape {tuple(x.shape)}, "
                f"which does not fit layout {self.layouts[pos]!r}: {exc}"
            ) from exc

    def _trace(self) -> BlockGraph:
        if self.example_inputs is None:
            raise StitchframeError(
                f"Anchor {self.name!r} has no example_inputs; its adapter must pass a batch-1 example "
                "so shapes and FLOPs can be traced"
            )
        inputs = _to_device(self.example_inputs, _device_of(self))
        modes = [(m, m.training) for m in self.modules()]  # restored one by one: parts may differ
        self.eval()
        try:
            with torch.no_grad():

                def stem_step():
                    c = self.prepare(inputs)
                    return c, self.run_stem(inputs, c)

                (ctx, x), stem_flops = count_flops(stem_step)
                stem = BlockInfo(
                    name=f"{self.name}.stem",
                    kind="stem",
                    index=-1,
                    stage=self.stages[0],
                    path=self._paths["stem"],
                    flops=stem_flops,
                    params=_nparams(self.stem, self.context),
                    out_spec=self._spec(x, 0),
                )
                blocks = []
                for i in range(self.depth):
                    x, fl = count_flops(self.run_blocks, x, i, i + 1, ctx)
                    blocks.append(
                        BlockInfo(
                            name=f"{self.name}.blocks[{i}]",
                            kind="block",
                            index=i,
                            stage=self.stages[i + 1],
                            path=self._paths[f"blocks[{i}]"],
                            flops=fl,
                            params=_nparams(self.blocks[i]),
                            out_spec=self._spec(x, i + 1),
                        )
                    )
                _, head_flops = count_flops(self.run_head, x, ctx)
                head = BlockInfo(
                    name=f"{self.name}.head",
                    kind="head",
                    index=self.depth,
                    stage=self.stages[-1],
                    path=self._paths["head"],
                    flops=head_flops,
                    params=_nparams(self.norm, self.head),
                    out_spec=None,
                )
        finally:
            for m, mode in modes:
                m.training = mode
        return BlockGraph(self.name, stem, blocks, head)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, depth={self.depth}, source={self.source!r}"


def _path_of(module: nn.Module, names: Mapping[int, str], default: str) -> str:
    """``module``'s path in the model; for a wrapper, its wrapped modules' paths joined by ``+``."""
    if id(module) in names:
        return names[id(module)]
    parts = [names[id(child)] for child in module.children() if id(child) in names]
    return "+".join(parts) if parts else default


def _nparams(*modules: nn.Module | None) -> int:
    seen: set[int] = set()
    total = 0
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors in a mapping/sequence, to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        if hasattr(obj, "to"):  # e.g. transformers.BatchEncoding
            return obj.to(device)
        return type(obj)({k: _to_device(v, device) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
