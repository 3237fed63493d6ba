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

from .errors import StitchframeError, did_you_mean
from .graph import LAYOUTS, ActivationSpec, BlockGraph, BlockInfo

__all__ = ["Anchor", "Preprocess", "count_flops", "anchor_name", "NORM_MACS", "BATCHNORM_EVAL_MACS"]

_aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


#: Multiply-adds per element of a normalisation layer, with / without an affine weight (fvcore's rule,
#: which the SN-Net papers' counts follow): layer, group and RMS norm, and BatchNorm in training.
NORM_MACS = (5, 4)
#: Multiply-adds per element of BatchNorm in inference (a per-channel scale and shift), with / without
#: an affine weight.
BATCHNORM_EVAL_MACS = (2, 1)


def _norm_flops(input_shape, _normalized_shape=None, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    """``native_layer_norm(input, normalized_shape, weight, ...)``; ``_fused_rms_norm`` alike."""
    return 2 * _numel(input_shape) * NORM_MACS[weight_shape is None]


def _group_norm_flops(input_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    """``native_group_norm(input, weight, bias, N, C, HxW, group, eps)``."""
    return 2 * _numel(input_shape) * NORM_MACS[weight_shape is None]


def _batch_norm_flops(training: bool | None) -> Callable[..., int]:
    """A formula for a batch-norm op; ``training=None``: the op's 6th argument says (``native_batch_norm``)."""

    def flops(input_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
        train = bool(args[3]) if training is None else training  # args: bias, running_mean, running_var, training
        table = NORM_MACS if train else BATCHNORM_EVAL_MACS
        return 2 * _numel(input_shape) * table[weight_shape is None]

    return flops


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    formulas: dict[Any, Callable[..., int]] = {
        _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        _aten.native_layer_norm: _norm_flops,
        _aten.native_group_norm: _group_norm_flops,
        _aten.native_batch_norm: _batch_norm_flops(None),
        _aten._native_batch_norm_legit: _batch_norm_flops(None),
        _aten.cudnn_batch_norm: _batch_norm_flops(None),
        _aten._native_batch_norm_legit_no_training: _batch_norm_flops(False),
    }
    for name, train in (("_batch_norm_no_update", False), ("_batch_norm_with_update", True)):
        if hasattr(_aten, name):
            formulas[getattr(_aten, name)] = _batch_norm_flops(train)
    if hasattr(_aten, "_fused_rms_norm"):
        formulas[_aten._fused_rms_norm] = _norm_flops
    return formulas


#: FLOP formulas torch's counter lacks: fused attention on CPU (otherwise counted as zero: DeiT-Ti reads
#: 2.15 GFLOPs instead of 2.51) and normalisation layers (the papers count them: DeiT-Ti 1.258 GMACs).
_EXTRA_FLOP_FORMULAS = _extra_formulas()


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` under :class:`torch.utils.flop_counter.FlopCounterMode`.

    Counted as the SN-Net papers (and fvcore) count: matrix products and
    convolutions, attention (fused CPU attention too) and normalisation
    layers (:data:`NORM_MACS` multiply-adds per element; BatchNorm in
    inference :data:`BATCHNORM_EVAL_MACS`); element-wise activations,
    softmax and additions are not counted.  The result is in FLOPs, torch's
    convention: one multiply-add is 2 FLOPs, so MACs (the papers' "FLOPs")
    are half of it.

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


def _per_position(value, n: int, what: str, name: str) -> list:
    if isinstance(value, (list, tuple)) and not (what == "grid" and len(value) == 2 and isinstance(value[0], int)):
        if len(value) != n:
            raise StitchframeError(
                f"Anchor {name!r}: {what} has {len(value)} entries, expected {n}, one per cut position (the stem's "
                f"output and each of the {n - 1} blocks'); give one value for all positions, or {n} values"
            )
        return list(value)
    return [value] * n


def _layout_hint(x: torch.Tensor) -> str:
    """Which layouts a tensor of ``x``'s rank can have, as a fix to suggest."""
    if x.dim() == 4:
        return "a 4-D activation is layout 'map' ([B, C, H, W]) or 'nhwc' ([B, H, W, C])"
    if x.dim() == 3:
        return ("a 3-D activation is layout 'tokens' ([B, prefix + H*W, C]; set prefix= for cls tokens and grid= "
                "for a non-square grid) or 'sequence' ([B, L, C])")
    return f"no layout takes a {x.dim()}-D activation; the part must output one tensor of the layouts in LAYOUTS"


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

    Attributes:
        context: ``prepare`` when it is an ``nn.Module`` (its parameters
            belong to the anchor), else ``None``.
        prepare_fn: ``prepare`` when it is a plain callable, else ``None``.
        uses_context: Whether stem, blocks and head receive a context.
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
        self.context = prepare if isinstance(prepare, nn.Module) else None
        self.prepare_fn = None if isinstance(prepare, nn.Module) else prepare
        self.uses_context = prepare is not None
        n = len(blocks) + 1
        self.layouts = _per_position(layout, n, "layout", name)
        unknown = sorted({str(v) for v in self.layouts if v not in LAYOUTS})
        if unknown:
            raise StitchframeError(f"Anchor {name!r}: unknown layout {unknown[0]!r}; "
                                   f"{did_you_mean(unknown[0], LAYOUTS)}choose one of {', '.join(LAYOUTS)}")
        self.prefixes = _per_position(prefix, n, "prefix", name)
        self.grids = _per_position(grid, n, "grid", name)
        self.stages = list(stages) if stages is not None else [0] * n
        if len(self.stages) != n:
            raise StitchframeError(
                f"Anchor {name!r}: stages has {len(self.stages)} entries, expected {n}: the stage of the stem, then "
                f"one per block ({n - 1} blocks); stages=[0] * {n} puts them all in one stage"
            )
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
        if self.prepare_fn is not None:
            return self.prepare_fn(inputs)
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
                f"which does not fit layout {self.layouts[pos]!r}: {exc}; {_layout_hint(x)}: pass Anchor(layout=...), "
                "one value for all positions or one per position"
            ) from exc

    def _run_part(self, part: str, fn: Callable[..., Any], *args: Any) -> tuple[Any, int]:
        """``count_flops(fn, *args)``; a failure names the part and how to fix the example or the cut."""
        try:
            return count_flops(fn, *args)
        except StitchframeError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shape = tuple(self.example_inputs.shape) if isinstance(self.example_inputs, torch.Tensor) else "given"
            raise StitchframeError(
                f"Anchor {self.name!r}: running the {part} on example_inputs (shape {shape}) failed: "
                f"{type(exc).__name__}: {first}. example_inputs must be a batch-1 input the model takes, and each "
                "part must take what the part before it returns (stem -> blocks in order -> norm -> head)"
            ) from exc

    def _info(self, kind: str, index: int, part: str, flops: int, params: int,
              spec: ActivationSpec | None) -> BlockInfo:
        stage = self.stages[0] if kind == "stem" else self.stages[-1] if kind == "head" else self.stages[index + 1]
        return BlockInfo(name=f"{self.name}.{part}", kind=kind, index=index, stage=stage, path=self._paths[part],
                         flops=flops, params=params, out_spec=spec)

    def _trace(self) -> BlockGraph:
        if self.example_inputs is None:
            raise StitchframeError(
                f"Anchor {self.name!r} has no example_inputs; its adapter must pass a batch-1 example "
                "so shapes and FLOPs can be traced"
            )
        inputs = to_device(self.example_inputs, device_of(self))
        modes = [(m, m.training) for m in self.modules()]  # restored one by one: parts may differ
        self.eval()
        try:
            with torch.no_grad():

                def stem_step():
                    c = self.prepare(inputs)
                    return c, self.run_stem(inputs, c)

                (ctx, x), flops = self._run_part("stem", stem_step)
                stem = self._info("stem", -1, "stem", flops, _nparams(self.stem, self.context), self._spec(x, 0))
                blocks = []
                for i in range(self.depth):
                    x, flops = self._run_part(f"blocks[{i}]", self.run_blocks, x, i, i + 1, ctx)
                    blocks.append(self._info("block", i, f"blocks[{i}]", flops, _nparams(self.blocks[i]),
                                             self._spec(x, i + 1)))
                _, flops = self._run_part("head", self.run_head, x, ctx)
                head = self._info("head", self.depth, "head", flops, _nparams(self.norm, self.head), None)
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


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors in a mapping/sequence, to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        if hasattr(obj, "to"):  # e.g. transformers.BatchEncoding
            return obj.to(device)
        return type(obj)({k: to_device(v, device) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
