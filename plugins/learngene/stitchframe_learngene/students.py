"""Students: narrower and shallower models of the teacher's family.

Two builders, tried in this order under ``builder: auto``:

* ``timm_vit`` - the teacher is a timm vision transformer (``timm:`` source,
  family ``vision_transformer``: ViT, DeiT, DeiT III, register and distilled
  variants).  Students are built by timm from the teacher's own model name and
  model arguments, with ``embed_dim``, ``depth``, ``num_heads`` and
  ``mlp_ratio`` replaced, so they are the same kind of model (patch size,
  prefix tokens, position embeddings, heads) and cut by the timm adapter.
* ``vit`` - any teacher whose activations are ``tokens`` on one grid at every
  cut point (the tiny test ViTs, Hugging Face ViTs, ...): students are the
  plugin's own pre-norm :class:`PoolViT` with the teacher's input size, patch
  size (input size over token grid), number of prefix tokens and classes.

Other families (CNNs, Swin, text encoders) are refused with a message that
lists these two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from stitchframe import Anchor, SpecError, StitchframeError, output_logits

from .options import PoolOptions, StudentSpec

__all__ = [
    "STUDENT_BUILDERS",
    "PoolViT",
    "StudentBuilder",
    "build_student",
    "choose_builder",
    "num_classes_of",
    "vit_anchor",
]


# ---------------------------------------------------------------------------
# the plugin's own ViT
# ---------------------------------------------------------------------------
class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class PoolBlock(nn.Module):
    """Pre-norm transformer block: attention and MLP, each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PoolEmbed(nn.Module):
    """Patch embedding, ``prefix`` learned prefix tokens and a learned position embedding."""

    def __init__(self, channels: int, dim: int, patch: tuple[int, int], grid: tuple[int, int], prefix: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)
        self.prefix_tokens = nn.Parameter(torch.randn(1, prefix, dim) * 0.02) if prefix else None
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + grid[0] * grid[1], dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        if self.prefix_tokens is not None:
            x = torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class PoolHead(nn.Module):
    """Classifier on the first prefix token, or on the mean token when there is none."""

    def __init__(self, dim: int, classes: int, prefix: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, 0] if self.prefix else x.mean(dim=1))


class PoolViT(nn.Module):
    """A plain pre-norm ViT: the student the ``vit`` builder makes for any tokens teacher.

    Args:
        dim: Embedding width.
        depth: Number of blocks.
        heads: Attention heads (divide ``dim``).
        classes: Output classes.
        img: Input ``(C, H, W)``.
        grid: Token grid ``(H, W)``; the patch size is ``img / grid``.
        prefix: Prefix (class) tokens.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        classes: int,
        *,
        img: tuple[int, int, int],
        grid: tuple[int, int],
        prefix: int = 1,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        c, h, w = img
        if h % grid[0] or w % grid[1]:
            raise SpecError(f"PoolViT: input {h}x{w} is not a whole number of patches of a {grid[0]}x{grid[1]} grid")
        self.embed = PoolEmbed(c, dim, (h // grid[0], w // grid[1]), grid, prefix)
        self.blocks = nn.ModuleList(PoolBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = PoolHead(dim, classes, prefix)
        self.img, self.grid, self.prefix = tuple(img), tuple(grid), prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def vit_anchor(model: PoolViT, name: str, *, preprocess: Any = None, source: str = "") -> Anchor:
    """Cut a :class:`PoolViT` into an Anchor (eval mode)."""
    return Anchor(
        name,
        stem=model.embed,
        blocks=list(model.blocks),
        norm=model.norm,
        head=model.head,
        layout="tokens",
        prefix=model.prefix,
        grid=model.grid,
        example_inputs=torch.randn(1, *model.img, generator=torch.Generator().manual_seed(0)),
        model=model,
        preprocess=preprocess,
        source=source,
        family="learngene_vit",
    ).eval()


# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class StudentBuilder:
    """Builds students of one teacher family.

    Attributes:
        name: The name a pool's ``builder`` option uses.
        describe: What teachers it takes, for error messages.
        claims: ``claims(teacher, options)`` is true when it can build students of that teacher.
        build: ``build(teacher, student, options, classes) -> Anchor`` (randomly initialised).
    """

    name: str
    describe: str
    claims: Callable[[Anchor, PoolOptions], bool]
    build: Callable[[Anchor, StudentSpec, PoolOptions, int], Anchor]


def num_classes_of(teacher: Anchor) -> int:
    """Output classes of the teacher (its logits' width on its example input)."""
    with torch.no_grad():
        was = teacher.training
        try:
            logits = output_logits(teacher.eval()(teacher.example_inputs))
        finally:
            teacher.train(was)
    return int(logits.shape[-1])


def _tokens_on_one_grid(teacher: Anchor) -> bool:
    specs = [teacher.graph.spec_at(p) for p in teacher.graph.positions()]
    return all(s.layout == "tokens" and (s.grid, s.prefix) == (specs[0].grid, specs[0].prefix) for s in specs) and (
        isinstance(teacher.example_inputs, torch.Tensor) and teacher.example_inputs.dim() == 4
    )


def _build_vit(teacher: Anchor, student: StudentSpec, options: PoolOptions, classes: int) -> Anchor:
    spec = teacher.graph.spec_at(0)
    model = PoolViT(
        student.width,
        student.depth,
        student.num_heads,
        classes,
        img=tuple(teacher.example_inputs.shape[1:]),
        grid=spec.grid,
        prefix=spec.prefix,
        mlp_ratio=student.mlp_ratio,
    )
    return vit_anchor(model, student.name, preprocess=teacher.preprocess, source=f"learngene:{student.name}")


def _is_timm_vit(teacher: Anchor, options: PoolOptions) -> bool:
    if not options.teacher.startswith("timm:") or teacher.family != "vision_transformer":
        return False
    try:
        import stitchframe_timm  # noqa: F401
    except ImportError:
        return False
    return True


def _build_timm_vit(teacher: Anchor, student: StudentSpec, options: PoolOptions, classes: int) -> Anchor:
    import stitchframe_timm

    identifier = options.teacher.split(":", 1)[1]
    teacher_opts = dict(options.teacher_options)
    for key in (
        "pretrained",
        "weights",
        "key_map",
        "drop_path_rate",
        "num_classes",
    ):  # the teacher's, not the student's
        teacher_opts.pop(key, None)
    kwargs = dict(teacher_opts.pop("model_kwargs", {}))
    kwargs.update(
        embed_dim=student.width, depth=student.depth, num_heads=student.num_heads, mlp_ratio=student.mlp_ratio
    )
    timm_options = stitchframe_timm.TimmOptions(**teacher_opts, num_classes=classes, model_kwargs=kwargs)
    model = stitchframe_timm.create_model(identifier, timm_options)
    return stitchframe_timm.timm_anchor(
        model, name=student.name, source=f"learngene:{student.name}", img_size=timm_options.img_size
    )


#: The builders, in the order ``builder: auto`` tries them.
STUDENT_BUILDERS: tuple[StudentBuilder, ...] = (
    StudentBuilder(
        name="timm_vit",
        describe="timm vision transformers (timm:vit_*, deit_*, deit3_*), students built by timm",
        claims=_is_timm_vit,
        build=_build_timm_vit,
    ),
    StudentBuilder(
        name="vit",
        describe="any teacher with 'tokens' activations on one grid (ViT-style), students are PoolViTs",
        claims=lambda teacher, options: _tokens_on_one_grid(teacher),
        build=_build_vit,
    ),
)


def choose_builder(teacher: Anchor, options: PoolOptions) -> StudentBuilder:
    """The builder for this teacher (``options.builder``, or the first that claims it).

    Raises:
        SpecError: The named builder does not take this teacher, or none does.
    """
    candidates = [b for b in STUDENT_BUILDERS if options.builder in ("auto", b.name)]
    for builder in candidates:
        if builder.claims(teacher, options):
            return builder
    described = "; ".join(f"{b.name}: {b.describe}" for b in candidates)
    raise SpecError(
        f"learngene: cannot build students of teacher {options.teacher!r} (family {teacher.family or '?'!r}, "
        f"layout {teacher.graph.spec_at(0).layout!r}) with builder {options.builder!r}; supported: {described}. "
        "Use a ViT-style teacher"
    )


def build_student(
    builder: StudentBuilder, teacher: Anchor, student: StudentSpec, options: PoolOptions, classes: int, seed: int
) -> Anchor:
    """Build one randomly initialised student (seeded), as an Anchor in eval mode."""
    torch.manual_seed(seed)
    try:
        anchor = builder.build(teacher, student, options, classes)
    except StitchframeError:
        raise
    except Exception as exc:
        raise StitchframeError(
            f"learngene: builder {builder.name!r} could not build student {student.name!r} "
            f"(width {student.width}, depth {student.depth}, heads {student.num_heads}) of {options.teacher!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return anchor.eval()
