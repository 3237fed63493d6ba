"""The spec: what ``stitchframe build spec.yaml`` reads.

YAML is parsed by PyYAML, structured into the attrs classes below by cattrs
(unknown keys rejected), and validated by attrs validators.  Every error is a
one-line :class:`~stitchframe.errors.SpecError` naming the dotted spec path
(``stitch.layer_options.rank``).  Plugin options (``anchors[i].options``,
``stitch.space_options``, ``stitch.layer_options``, ``data.options``, ``task.options``) are
validated the same way against the registered ``Options`` class when the spec
meets the registries (:func:`validate_spec`, :func:`stitchframe.assemble`).

Every field carries ``metadata={"help": ...}``; the spec reference page of
the docs is generated from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import yaml
from cattrs.errors import ForbiddenExtraKeysError

from .errors import SpecError, did_you_mean

__all__ = [
    "AnchorSpec",
    "StitchSpec",
    "CalibrationSpec",
    "DataSpec",
    "TaskSpec",
    "TrainSpec",
    "RESUME_NEUTRAL",
    "RESUME_ADJUSTABLE",
    "EvalSpec",
    "Spec",
    "load_spec",
    "parse_spec",
    "dump_spec",
    "spec_hash",
    "structure_options",
    "unstructure_options",
]

_v = attrs.validators


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class AnchorSpec:
    """One anchor of the family. A plain string is shorthand for ``{source: ...}``."""

    source: str = attrs.field(
        validator=_v.instance_of(str),
        metadata=_help("Where the model comes from, 'prefix:identifier' (timm:deit_tiny_patch16_224, hf:./minilm)."),
    )
    name: str | None = attrs.field(
        default=None,
        validator=_v.optional(_v.matches_re(r"^[a-z][a-z0-9_]*$")),
        metadata=_help("Anchor name used in route strings and weight keys (lowercase snake_case); default from the source."),
    )
    options: dict[str, Any] = attrs.field(
        factory=dict, metadata=_help("Options of the adapter that owns the source prefix (see its plugin's docs).")
    )


@attrs.frozen(kw_only=True)
class StitchSpec:
    """Which routes to offer and how to stitch them."""

    space: str = attrs.field(
        default="snnet", metadata=_help("Stitch space: snnet | snnet2 | cross | anchors | one registered by a plugin.")
    )
    space_options: dict[str, Any] = attrs.field(
        factory=dict, metadata=_help("Options of the stitch space (snnet: kernel, stride, nearest, share, ...).")
    )
    layer: str = attrs.field(
        default="auto",
        metadata=_help("Stitching layer: auto | linear | conv1x1 | lowrank | one registered by a plugin. "
                       "auto: conv1x1 between feature maps, linear otherwise."),
    )
    layer_options: dict[str, Any] = attrs.field(
        factory=dict, metadata=_help("Options of the stitching layer (lowrank: rank, alpha; linear: resize, prefix).")
    )
    final_norm: Literal["keep", "skip_stitched"] = attrs.field(
        default="keep",
        validator=_v.in_(("keep", "skip_stitched")),
        metadata=_help("keep: every route ends with its end anchor's final norm (SN-Netv2); "
                       "skip_stitched: stitched routes skip it (the SN-Net v1 code)."),
    )


def _ridge_value(_inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"'{attr.name}' must be a finite number >= 0 or 'auto', got {value!r}")


@attrs.frozen(kw_only=True)
class CalibrationSpec:
    """Least-squares initialisation of the stitching layers."""

    batches: int = attrs.field(
        default=8, validator=[_v.instance_of(int), _v.ge(0)],
        metadata=_help("Training batches used for least squares (0: keep the random initialisation)."),
    )
    batch_size: int | None = attrs.field(
        default=None, validator=_v.optional([_v.instance_of(int), _v.ge(1)]),
        metadata=_help("Images per calibration batch (default: train.batch_size). Calibration streams: memory "
                       "holds one batch, whatever calibration.batches is."),
    )
    ridge: float | Literal["auto"] = attrs.field(
        default="auto", validator=_ridge_value,
        metadata=_help("Relative ridge regularisation of the least-squares solve, or auto: per stitching layer, "
                       "the ridge of a grid (0, 1e-5 ... 1) with the smallest error on held-out calibration "
                       "images (cross-validation over 4 folds: image i in fold i mod 4), then solved on all of them."),
    )
    share_fit: Literal["pooled", "mean"] = attrs.field(
        default="pooled", validator=_v.in_(("pooled", "mean")),
        metadata=_help("A stitching layer shared by several cut pairs (the snnet space's windows): pooled: one "
                       "least squares over the rows of all its pairs; mean: one solve per pair, solutions "
                       "averaged (the SN-Net reference code)."),
    )
    augment: int = attrs.field(
        default=3, validator=[_v.instance_of(int), _v.ge(0)],
        metadata=_help("Extra views of every calibration batch of images, each a random resized crop (35-100% "
                       "of the area) and random flip of every image, seeded by seed; each view costs one more "
                       "pass of the anchors (0: the batches as loaded; non-image inputs get no extra views)."),
    )
    heads: bool = attrs.field(
        default=False, validator=_v.instance_of(bool),
        metadata=_help("Also fit every anchor's classifier (the last Linear layer of its head) by ridge regression "
                       "on one-hot labels of the same batches: for anchors given new classifiers (num_classes)."),
    )
    head_ridge: float = attrs.field(
        default=0.1, validator=_v.ge(0.0), metadata=_help("Relative ridge regularisation of the classifier fit.")
    )
    refit: bool = attrs.field(
        default=False, validator=_v.instance_of(bool),
        metadata=_help("After training, fit the stitching layers again by least squares through the trained "
                       "anchors (same batches and options; the classifiers are left as trained). It replaces what "
                       "training taught the stitching layers: for short fine-tunes, where each one gets a few "
                       "steps while the anchors it joins move; off for long training."),
    )


@attrs.frozen(kw_only=True)
class DataSpec:
    """The dataset."""

    name: str = attrs.field(metadata=_help("Dataset: fashion_mnist | digits | imagefolder | synthetic | a plugin's."))
    options: dict[str, Any] = attrs.field(factory=dict, metadata=_help("Options of the dataset loader."))
    img_size: int | None = attrs.field(
        default=None, validator=_v.optional(_v.ge(8)),
        metadata=_help("Input resolution; default: the anchors' own."),
    )
    num_workers: int = attrs.field(default=0, validator=_v.ge(0), metadata=_help("DataLoader worker processes."))


#: TrainSpec fields that may change between a run and its resumption without changing its result.
RESUME_NEUTRAL = frozenset({"checkpoint_every", "log_every", "keep_checkpoints"})
#: TrainSpec fields that may change on resume to rescue a run (after a non-finite loss, say); the
#: steps after the resume then differ from those of an uninterrupted run, and a note says so.
RESUME_ADJUSTABLE = frozenset({"lr", "stitch_lr", "grad_clip", "amp"})


@attrs.frozen(kw_only=True)
class TaskSpec:
    """What every route is trained and evaluated for."""

    name: str = attrs.field(
        default="classification", validator=_v.instance_of(str),
        metadata=_help("Task: classification (each route's end anchor's head gives class logits; top-1 accuracy) "
                       "| one registered by a plugin (stitchframe-dense: segmentation)."),
    )
    options: dict[str, Any] = attrs.field(factory=dict, metadata=_help("Options of the task (see its plugin's docs)."))


@attrs.frozen(kw_only=True)
class TrainSpec:
    """Training of the SN-Net after calibration."""

    epochs: float = attrs.field(default=1.0, validator=_v.ge(0), metadata=_help("Epochs over the training split (fractions allowed)."))
    max_steps: int | None = attrs.field(
        default=None, validator=_v.optional(_v.ge(0)), metadata=_help("Stop after this many optimizer steps.")
    )
    batch_size: int = attrs.field(default=64, validator=_v.ge(1), metadata=_help("Global batch size per optimizer step."))
    grad_accum: int = attrs.field(default=1, validator=_v.ge(1), metadata=_help("Micro-batches accumulated per step."))
    lr: float = attrs.field(default=5e-5, validator=_v.gt(0), metadata=_help("Learning rate of the anchors."))
    stitch_lr: float | None = attrs.field(
        default=None, validator=_v.optional(_v.gt(0)), metadata=_help("Learning rate of the stitching layers (default: 10 x lr).")
    )
    weight_decay: float = attrs.field(default=0.05, validator=_v.ge(0), metadata=_help("AdamW weight decay."))
    warmup_steps: int = attrs.field(default=0, validator=_v.ge(0), metadata=_help("Linear warm-up steps."))
    scheduler: Literal["cosine", "constant"] = attrs.field(
        default="cosine", validator=_v.in_(("cosine", "constant")), metadata=_help("Learning-rate schedule after warm-up.")
    )
    sampling: Literal["uniform", "cyclic", "flops_grouped"] = attrs.field(
        default="uniform", validator=_v.in_(("uniform", "cyclic", "flops_grouped")),
        metadata=_help("Route sampling per step: uniform over routes (independent draws), cyclic (every route once "
                       "per cycle, in a new order each cycle; with anchor_share the anchor steps are spread evenly "
                       "and the anchors taken in turn), or SN-Netv2's FLOPs-grouped sampling."),
    )
    flops_groups: int = attrs.field(default=8, validator=_v.ge(1), metadata=_help("Number of FLOPs groups for flops_grouped."))
    anchor_share: float = attrs.field(
        default=0.0, validator=[_v.ge(0.0), _v.le(1.0)],
        metadata=_help("Share of the steps that train an anchor route (drawn uniformly among the anchors); the "
                       "other steps sample the stitched routes by `sampling`. 0: anchors are sampled like any "
                       "route, once in len(routes) steps, and end below the same models fine-tuned alone."),
    )
    route_bn_batches: int = attrs.field(
        default=0, validator=[_v.instance_of(int), _v.ge(0)],
        metadata=_help("Per-route BatchNorm statistics from this many training batches: before calibration the "
                       "anchors' statistics are re-estimated on the data, after training every route's; they are "
                       "saved with the build and used by select, export and evaluation (0: every route keeps the "
                       "pretrained statistics of the anchors). With `batchnorm` in `freeze` the anchors keep their "
                       "pretrained statistics and only layers that run after a stitch get new ones. For CNN anchors."),
    )
    loss: Literal["ce", "distill"] = attrs.field(
        default="ce", validator=_v.in_(("ce", "distill")), metadata=_help("Cross-entropy, or distillation from a teacher anchor.")
    )
    teacher: str | None = attrs.field(default=None, metadata=_help("Teacher anchor for distill: an anchor's name, or `end` (every stitched route learns from the "
                                "anchor it ends in, anchor routes from the labels alone; an anchor named `end` takes "
                                "precedence). Default: the anchor with the most FLOPs."))
    distill_alpha: float = attrs.field(
        default=0.5, validator=[_v.ge(0), _v.le(1)], metadata=_help("Weight of the distillation term (1 - alpha for CE).")
    )
    temperature: float = attrs.field(default=1.0, validator=_v.gt(0), metadata=_help("Distillation temperature."))
    freeze: list[Literal["anchors", "stitches", "stems", "heads", "batchnorm"]] = attrs.field(
        factory=list,
        validator=_v.deep_iterable(_v.in_(("anchors", "stitches", "stems", "heads", "batchnorm"))),
        metadata=_help("Parts kept frozen: anchors, stitches, stems, heads, batchnorm (every BatchNorm layer keeps "
                       "its running statistics and affine weights: CNN anchors shared by many routes)."),
    )
    amp: Literal["auto", "bf16", "off"] = attrs.field(
        default="auto", validator=_v.in_(("auto", "bf16", "off")), metadata=_help("bf16 autocast: auto (on CUDA only), bf16, off.")
    )
    grad_clip: float | None = attrs.field(default=None, validator=_v.optional(_v.gt(0)), metadata=_help("Clip gradient norm."))
    checkpoint_every: int = attrs.field(
        default=0, validator=_v.ge(0), metadata=_help("Save a checkpoint every N steps (0: only at the end).")
    )
    log_every: int = attrs.field(default=10, validator=_v.ge(1), metadata=_help("Log loss and throughput every N steps."))
    keep_checkpoints: int = attrs.field(
        default=2, validator=[_v.instance_of(int), _v.ge(1)], metadata=_help("How many of the newest checkpoints to keep.")
    )
    label_smoothing: float = attrs.field(
        default=0.0, validator=[_v.ge(0), _v.lt(1)], metadata=_help("Label smoothing of the cross-entropy term.")
    )


@attrs.frozen(kw_only=True)
class EvalSpec:
    """Evaluation of every route."""

    batch_size: int = attrs.field(default=128, validator=_v.ge(1), metadata=_help("Evaluation batch size."))
    max_batches: int | None = attrs.field(
        default=None, validator=_v.optional(_v.ge(1)), metadata=_help("Evaluate on at most this many batches.")
    )
    latency: bool = attrs.field(default=False, metadata=_help("Also measure each route's latency."))


@attrs.frozen(kw_only=True)
class Spec:
    """A whole SN-Net build."""

    anchors: list[AnchorSpec] = attrs.field(
        validator=_v.min_len(1), metadata=_help("The anchor family (any order; spaces order them by FLOPs).")
    )
    stitch: StitchSpec = attrs.field(factory=StitchSpec, metadata=_help("Stitch space and stitching layers."))
    calibration: CalibrationSpec = attrs.field(factory=CalibrationSpec, metadata=_help("Least-squares initialisation."))
    data: DataSpec | None = attrs.field(default=None, metadata=_help("Dataset (not needed by `stitchframe routes`)."))
    task: TaskSpec = attrs.field(factory=TaskSpec, metadata=_help("Task trained and evaluated on every route."))
    train: TrainSpec = attrs.field(factory=TrainSpec, metadata=_help("Training."))
    eval: EvalSpec = attrs.field(factory=EvalSpec, metadata=_help("Evaluation."))
    output: str | None = attrs.field(default=None, metadata=_help("Output directory (default: runs/<spec file name>)."))
    seed: int = attrs.field(default=0, validator=_v.instance_of(int), metadata=_help("Random seed."))
    device: Literal["auto", "cpu", "cuda"] = attrs.field(
        default="auto", validator=_v.in_(("auto", "cpu", "cuda")), metadata=_help("auto: CUDA when available.")
    )
    memory_format: Literal["auto", "channels_last", "contiguous"] = attrs.field(
        default="auto", validator=_v.in_(("auto", "channels_last", "contiguous")),
        metadata=_help("Layout of the 4-d weights and activations for calibration, training and evaluation: "
                       "channels_last (NHWC; convolutional anchors train about twice as fast on CPU), contiguous "
                       "(NCHW), or auto: channels_last when an anchor has more than one 2-d convolution (a CNN; "
                       "not ViTs with a single patch-embedding convolution, not text models)."),
    )

    def __attrs_post_init__(self) -> None:
        names = [a.name for a in self.anchors if a.name is not None]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SpecError(f"anchors: names {sorted(dup)} are used twice; give each anchor a unique name")
    

# ---------------------------------------------------------------------------
# structuring with paths
# ---------------------------------------------------------------------------
def _what(value: Any) -> str:
    """``"str 'big'"``: a value's type and repr, for messages."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# PyYAML reads ``5e-5`` (no dot) as a string: float fields accept such numerals.
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _strict_int(value: Any, _type: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected an integer, got {_what(value)}")


def _strict_float(value: Any, _type: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)
    raise TypeError(f"expected a number, got {_what(value)}")


def _strict_str(value: Any, _type: type) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {_what(value)}")


def _strict_bool(value: Any, _type: type) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected true or false, got {_what(value)}")


def _guard_containers(conv: cattrs.Converter) -> None:
    """Lists and mappings must be given as such (cattrs would iterate a string, or call ``.items()`` on a list)."""
    from cattrs.cols import is_mapping, is_sequence, list_structure_factory, mapping_structure_factory

    def list_factory(type_: Any) -> Any:
        base = list_structure_factory(type_, conv)

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"expected a list, got {_what(value)}")
            return base(value, t)

        return hook

    def mapping_factory(type_: Any) -> Any:
        base = mapping_structure_factory(type_, conv)

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected a mapping, got {_what(value)}")
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise TypeError(f"keys must be strings, got {_what(bad[0])}")
            return base(value, t)

        return hook

    conv.register_structure_hook_factory(lambda t: is_sequence(t) and typing.get_origin(t) is list, list_factory)
    conv.register_structure_hook_factory(lambda t: is_mapping(t) and typing.get_origin(t) is dict, mapping_factory)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    for type_, hook in ((int, _strict_int), (float, _strict_float), (str, _strict_str), (bool, _strict_bool)):
        conv.register_structure_hook(type_, hook)
    _guard_containers(conv)

    def float_or_auto(value: Any, _type: Any) -> float | str:
        if value == "auto":
            return "auto"
        try:
            return _strict_float(value, float)
        except TypeError:
            raise TypeError(f"expected a number or 'auto', got {_what(value)}") from None

    conv.register_structure_hook(float | Literal["auto"], float_or_auto)

    def anchor_hook(value: Any, _type: type) -> AnchorSpec:
        if isinstance(value, str):
            return AnchorSpec(source=value)
        if not isinstance(value, dict):
            raise TypeError(f"expected a 'prefix:identifier' string or a mapping, got {type(value).__name__}")
        return _base_anchor(value, AnchorSpec)

    _base_anchor = cattrs.gen.make_dict_structure_fn(AnchorSpec, conv, _cattrs_forbid_extra_keys=True)
    conv.register_structure_hook(AnchorSpec, anchor_hook)
    for section in (StitchSpec, CalibrationSpec, DataSpec, TaskSpec, TrainSpec, EvalSpec):
        conv.register_structure_hook(section, _mapping_only(section, conv))
    return conv


def _mapping_only(cls: type, conv: cattrs.Converter) -> Any:
    """A structure hook for a spec section that refuses anything but a mapping (cattrs would fail obscurely)."""
    base = cattrs.gen.make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)

    def hook(value: Any, _type: type) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping of {cls.__name__} fields, got {_what(value)}")
        return base(value, cls)

    return hook


_CONVERTER = _make_converter()


def _format_exc(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        valid = sorted(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else []
        extra = sorted(exc.extra_fields)
        hint = did_you_mean(extra[0], valid) if extra else ""
        return f"unknown key(s) {', '.join(map(repr, extra))}; {hint}valid keys: {', '.join(valid)}"
    if isinstance(exc, KeyError):
        return "required key is missing"
    if type_ is not None and typing.get_origin(type_) is Literal:
        choices = ", ".join(repr(c) for c in typing.get_args(type_))
        return f"must be one of {choices}"
    if isinstance(exc, (ValueError, TypeError)):
        # attrs validators raise ValueError(message, attribute, ...): keep the message
        msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        if type_ in (int, float, str, bool) and ("invalid literal" in msg or "could not convert" in msg or not msg):
            return f"expected {type_.__name__}"
        return msg or f"invalid value for {getattr(type_, '__name__', type_)}"
    return f"{type(exc).__name__}: {exc}"


_FIELD_IN_MSG = re.compile(r"^(?:Length of )?'([A-Za-z_][A-Za-z0-9_]*)'")


def _first_error(exc: Exception, path: str) -> str:
    """First cattrs/attrs error as ``dotted.path: message`` (``path`` is the root)."""
    msgs = cattrs.transform_error(exc, path=path, format_exception=_format_exc)
    out = []
    for m in msgs:
        text, _, where = m.rpartition(" @ ")
        # attrs validators name the field: "'rank' must be >= 1: 0" -> path.rank
        field = _FIELD_IN_MSG.match(text)
        if field and not where.endswith(f".{field.group(1)}"):
            where = f"{where}.{field.group(1)}"
        out.append(f"{where}: {text}")
    return out[0] + (f" (and {len(out) - 1} more)" if len(out) > 1 else "")


#: The largest magnitude a number in a spec may have; larger ones are typing mistakes (``1e400``, ``1e30`` epochs).
MAX_SPEC_NUMBER = 1e18


def check_numbers(obj: Any, where: str) -> None:
    """Every number in ``obj`` (a spec, an options object, plain data) is finite and at most :data:`MAX_SPEC_NUMBER`.

    Raises:
        SpecError: Names the dotted path of the first bad number and what to write instead.
    """
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        if isinstance(obj, float) and not math.isfinite(obj):
            raise SpecError(f"{where}: {obj!r} is not a finite number (a value such as 1e400 overflows); "
                            "write a finite value")
        if abs(obj) > MAX_SPEC_NUMBER:
            raise SpecError(f"{where}: {obj!r} is out of range (at most {MAX_SPEC_NUMBER:g} in magnitude); "
                            "write a sane value")
        return
    if attrs.has(type(obj)):
        for field in attrs.fields(type(obj)):
            check_numbers(getattr(obj, field.name), f"{where}.{field.name}")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            check_numbers(value, f"{where}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_numbers(value, f"{where}[{i}]")


def structure_options(cls: type, data: Any, where: str) -> Any:
    """Build an options object from plain data, raising :class:`SpecError` with the path.

    Args:
        cls: The attrs options class (a registered entry's ``options``).
        data: The mapping from the spec (``None``: defaults).
        where: The dotted spec path of ``data``, for messages.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of options, got {type(data).__name__} {data!r}")
    try:
        options = _CONVERTER.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        raise SpecError(_first_error(exc, where)) from None
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}: {exc}") from None
    check_numbers(options, where)
    return options


def unstructure_options(obj: Any) -> dict[str, Any]:
    """Options object -> plain dict."""
    return _CONVERTER.unstructure(obj)


def parse_spec(data: Any, *, source: str = "spec") -> Spec:
    """Structure a plain mapping into a :class:`Spec`.

    Raises:
        SpecError: One line naming the dotted path of the first bad field.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping with an 'anchors' list, got {type(data).__name__}")
    try:
        spec = _CONVERTER.structure(data, Spec)
    except cattrs.BaseValidationError as exc:
        msg = _first_error(exc, "spec")
        msg = msg.removeprefix("spec: ").removeprefix("spec.")
        raise SpecError(f"{source}: {msg}") from None
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{source}: {exc}") from None
    for field in attrs.fields(Spec):
        try:
            check_numbers(getattr(spec, field.name), field.name)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None
    return spec


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read a YAML spec file.

    Raises:
        SpecError: The file is missing, not YAML, or not a valid spec; the
            message names the file and the dotted path of the bad field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"Spec file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"Spec file {str(p)!r} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{p}:{where}: not valid YAML ({problem})") from None
    return parse_spec(data, source=str(p))


def dump_spec(spec: Spec) -> str:
    """The spec as YAML (round-trips through :func:`load_spec`)."""
    return yaml.safe_dump(_CONVERTER.unstructure(spec), sort_keys=False)


#: Spec fields that do not change what a build computes, left out of :func:`spec_hash`: a build reloads and
#: resumes with any value of them, and builds made before they existed keep their hash.
UNHASHED = ("memory_format",)
#: Fields added after the first builds, left out of :func:`spec_hash` while they hold their default: builds
#: made before a field existed ran as its default does, so they keep their hash (and load and resume).
LATER_FIELDS: dict[tuple[str, ...], Any] = {("calibration", "refit"): False}


def spec_hash(spec: Spec) -> str:
    """A short, stable hash of a spec (recorded in saved weights).

    :data:`UNHASHED` fields are left out, and :data:`LATER_FIELDS` while they hold their default.
    """
    data = {k: v for k, v in _CONVERTER.unstructure(spec).items() if k not in UNHASHED}
    for *parents, name in LATER_FIELDS:
        section = data
        for key in parents:
            section = section.get(key) or {}
        if name in section and section[name] == LATER_FIELDS[(*parents, name)]:
            del section[name]
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
