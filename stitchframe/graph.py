"""Activation specs and block graphs.

An anchor is cut into a stem, ordered blocks and a head.  Its
:class:`BlockGraph` records, for every block, where it lives in the original
model, its FLOPs and parameters, and the :class:`ActivationSpec` of what it
outputs.  *Cut points* (positions) are numbered ``0..depth``: position ``0``
is the stem's output, position ``k`` the output of block ``k-1``.  A stitch
goes from a position of one anchor to a position of another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import attrs
import networkx as nx
import torch

from .errors import ShapeMismatchError

__all__ = ["LAYOUTS", "ActivationSpec", "BlockInfo", "BlockGraph"]

#: Activation layouts and the tensor shape each one means.
LAYOUTS: dict[str, str] = {
    "tokens": "[B, prefix + H*W, C]: patch tokens of a grid, after `prefix` cls/distillation tokens",
    "map": "[B, C, H, W]: a channels-first feature map",
    "nhwc": "[B, H, W, C]: a channels-last feature map (Swin)",
    "sequence": "[B, L, C]: a sequence of L positions (text)",
}

Layout = Literal["tokens", "map", "nhwc", "sequence"]


def _grid(value):
    if value is None:
        return None
    h, w = value
    return (int(h), int(w))


@attrs.frozen(kw_only=True)
class ActivationSpec:
    """What crosses a cut point between two blocks.

    Attributes:
        layout: One of :data:`LAYOUTS`.
        channels: Width of the feature dimension.
        grid: Spatial grid ``(H, W)`` for ``tokens``, ``map`` and ``nhwc``.
        length: Sequence length for ``sequence`` (``None``: variable).
        prefix: Number of prefix tokens (cls, distillation, registers) for ``tokens``.
    """

    layout: Layout = attrs.field(validator=attrs.validators.in_(tuple(LAYOUTS)))
    channels: int = attrs.field(validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)])
    grid: tuple[int, int] | None = attrs.field(default=None, converter=_grid)
    length: int | None = None
    prefix: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.layout in ("tokens", "map", "nhwc") and self.grid is None:
            raise ValueError(f"ActivationSpec layout {self.layout!r} needs a grid (H, W)")
        if self.layout != "tokens" and self.prefix:
            raise ValueError(f"ActivationSpec layout {self.layout!r} cannot have prefix tokens")

    @property
    def spatial(self) -> bool:
        """True when positions form a 2-D grid."""
        return self.grid is not None

    @property
    def positions(self) -> int | None:
        """Number of non-prefix positions (``H*W`` or ``length``)."""
        if self.grid is not None:
            return self.grid[0] * self.grid[1]
        return self.length

    def shape(self, batch: int | str = "B") -> tuple:
        """The tensor shape for a batch size (or the symbol ``"B"``)."""
        if self.layout == "tokens":
            return (batch, self.prefix + self.positions, self.channels)
        if self.layout == "map":
            return (batch, self.channels, *self.grid)
        if self.layout == "nhwc":
            return (batch, *self.grid, self.channels)
        return (batch, "L" if self.length is None else self.length, self.channels)

    def describe(self) -> str:
        """Shape as ``(B,197,192)``, as used in error messages."""
        return "(" + ",".join(str(s) for s in self.shape()) + ")"

    def example(self, batch: int = 1, length: int = 8, **kw) -> torch.Tensor:
        """A random tensor of this spec (``length`` fills a variable sequence)."""
        shape = [length if s == "L" else s for s in self.shape(batch)]
        return torch.randn(*shape, **kw)

    def check(self, x: torch.Tensor, where: str = "") -> None:
        """Raise :class:`ShapeMismatchError` if ``x`` does not have this spec."""
        expected = self.shape(x.shape[0])
        ok = x.dim() == len(expected) and all(e in ("L",) or e == s for e, s in zip(expected, x.shape))
        if not ok:
            at = f" at {where}" if where else ""
            raise ShapeMismatchError(
                f"Activation{at} has shape {tuple(x.shape)}, expected {self.describe()} ({self.layout})."
            )

    @classmethod
    def infer(
        cls,
        x: torch.Tensor,
        layout: Layout,
        *,
        prefix: int = 0,
        grid: tuple[int, int] | None = None,
        variable_length: bool = False,
    ) -> ActivationSpec:
        """Infer the spec of an activation tensor given its layout.

        Args:
            x: The activation (batch first).
            layout: Its layout.
            prefix: Prefix tokens (``tokens`` only).
            grid: The grid for ``tokens`` when ``H*W`` is not a square.
            variable_length: For ``sequence``, record the length as variable.

        Raises:
            ShapeMismatchError: ``x`` does not fit the layout.
        """
        if layout == "map":
            if x.dim() != 4:
                raise ShapeMismatchError(f"layout 'map' needs a 4-D tensor, got shape {tuple(x.shape)}")
            return cls(layout="map", channels=int(x.shape[1]), grid=(x.shape[2], x.shape[3]))
        if layout == "nhwc":
            if x.dim() != 4:
                raise ShapeMismatchError(f"layout 'nhwc' needs a 4-D tensor, got shape {tuple(x.shape)}")
            return cls(layout="nhwc", channels=int(x.shape[3]), grid=(x.shape[1], x.shape[2]))
        if x.dim() != 3:
            raise ShapeMismatchError(f"layout {layout!r} needs a 3-D tensor, got shape {tuple(x.shape)}")
        if layout == "sequence":
            return cls(
                layout="sequence", channels=int(x.shape[2]), length=None if variable_length else int(x.shape[1])
            )
        n = int(x.shape[1]) - prefix
        if grid is None:
            side = int(round(n**0.5))
            if side * side != n:
                raise ShapeMismatchError(
                    f"layout 'tokens' with {n} non-prefix tokens is not a square grid; pass grid=(H, W)"
                )
            grid = (side, side)
        if grid[0] * grid[1] != n:
            raise ShapeMismatchError(f"grid {tuple(grid)} does not hold {n} tokens")
        return cls(layout="tokens", channels=int(x.shape[2]), grid=grid, prefix=prefix)


@attrs.frozen(kw_only=True)
class BlockInfo:
    """One node of a :class:`BlockGraph`.

    Attributes:
        name: Display name, ``"deit_tiny.blocks[5]"``.
        kind: ``"stem"``, ``"block"`` or ``"head"``.
        index: Block index (``-1`` for the stem, ``depth`` for the head).
        stage: Stage the block belongs to (resolution level for CNNs/Swin).
        path: Module path inside the original model (``"blocks.5"``).
        flops: Forward FLOPs at the anchor's example input, batch 1
            (torch's convention: one multiply-add is 2 FLOPs; normalisation
            layers included, see :func:`stitchframe.count_flops`).
        params: Number of parameters.
        out_spec: Spec of the output (``None`` for the head).
    """

    name: str
    kind: Literal["stem", "block", "head"]
    index: int
    stage: int
    path: str
    flops: int
    params: int
    out_spec: ActivationSpec | None


class BlockGraph:
    """The blocks of one anchor as a :class:`networkx.DiGraph`.

    Nodes are ``"stem"``, ``"blocks[i]"`` and ``"head"``, each carrying a
    :class:`BlockInfo` in its ``info`` attribute (and its fields flattened as
    attributes); edges are data flow.  Today graphs are chains; the
    positional API (:meth:`spec_at`, :meth:`flops_between`) assumes one.

    Args:
        anchor: Anchor name, used in node display names.
        stem: The stem's info.
        blocks: The blocks' infos, in order.
        head: The head's info.
    """

    def __init__(self, anchor: str, stem: BlockInfo, blocks: list[BlockInfo], head: BlockInfo) -> None:
        self.anchor = anchor
        self.stem = stem
        self.blocks = tuple(blocks)
        self.head = head
        g = nx.DiGraph(anchor=anchor)
        ids = ["stem", *(f"blocks[{b.index}]" for b in blocks), "head"]
        for nid, info in zip(ids, (stem, *blocks, head)):
            g.add_node(nid, info=info, **attrs.asdict(info, recurse=False))
        nx.add_path(g, ids)
        self.nx = g

    @property
    def depth(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    def positions(self) -> range:
        """Cut positions ``0..depth``."""
        return range(self.depth + 1)

    def spec_at(self, pos: int) -> ActivationSpec:
        """Activation spec at cut position ``pos`` (0: stem output)."""
        self._check(pos)
        return self.stem.out_spec if pos == 0 else self.blocks[pos - 1].out_spec

    def name_at(self, pos: int) -> str:
        """Display name of the block whose output is position ``pos``."""
        self._check(pos)
        return self.stem.name if pos == 0 else self.blocks[pos - 1].name

    def consumer_at(self, pos: int) -> str:
        """Display name of the block that reads position ``pos`` (the head after the last block)."""
        self._check(pos)
        return self.blocks[pos].name if pos < self.depth else self.head.name

    def stage_at(self, pos: int) -> int:
        """Stage of the activation at position ``pos``."""
        self._check(pos)
        return self.stem.stage if pos == 0 else self.blocks[pos - 1].stage

    def flops_between(self, start: int, end: int) -> int:
        """FLOPs of blocks ``start..end-1``."""
        return sum(b.flops for b in self.blocks[start:end])

    def params_between(self, start: int, end: int) -> int:
        """Parameters of blocks ``start..end-1``."""
        return sum(b.params for b in self.blocks[start:end])

    @property
    def flops(self) -> int:
        """Total FLOPs: stem, blocks and head."""
        return self.stem.flops + self.flops_between(0, self.depth) + self.head.flops

    @property
    def macs(self) -> float:
        """Total multiply-adds (the SN-Net papers' "FLOPs"): half of :attr:`flops`."""
        return self.flops / 2

    @property
    def params(self) -> int:
        """Total parameters: stem, blocks and head (shared tensors counted once per node)."""
        return self.stem.params + self.params_between(0, self.depth) + self.head.params

    def stages(self) -> list[int]:
        """Stage of every position ``0..depth``."""
        return [self.stage_at(p) for p in self.positions()]

    def __iter__(self) -> Iterator[BlockInfo]:
        yield self.stem
        yield from self.blocks
        yield self.head

    def _check(self, pos: int) -> None:
        if not 0 <= pos <= self.depth:
            raise IndexError(f"{self.anchor}: cut position {pos} outside 0..{self.depth}")

    def __repr__(self) -> str:
        return (f"BlockGraph({self.anchor!r}, depth={self.depth}, gmacs={self.macs / 1e9:.3f}, "
                f"gflops={self.flops / 1e9:.3f})")
