"""stitchframe-transformers: Hugging Face transformers models as stitchframe anchors.

Registers, through stitchframe's hooks only:

* anchor adapters ``hf:`` (pretrained weights via ``from_pretrained``: hub ids,
  local folders, ``package:<package>/<folder>``) and ``hf-config:`` (random
  weights from a config, for tests and tiny models);
* the ``text_classification`` dataset (CSV/JSONL files or a built-in toy
  sentiment task), tokenised with the anchors' tokenizer.

Supported families: BERT, RoBERTa, DistilBERT (``sequence`` layout, padding
mask as context), ViT and DeiT (``tokens`` with 1 and 2 prefix tokens), GPT-2
and Llama (causal masks, position ids and rotary tables as context).

transformers is imported only when an anchor or dataset is loaded, so listing
plugins stays fast.
"""

from __future__ import annotations

from typing import Any

from stitchframe import hookimpl

from .data_options import TextClassificationOptions
from .options import HFConfigOptions, HFOptions

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "HFOptions",
    "HFConfigOptions",
    "TextClassificationOptions",
    "load_hf",
    "load_hf_config",
    "load_text_classification",
]


def load_hf(identifier: str, options: HFOptions, registries: Any = None, *, structure_only: bool = False) -> Any:
    """Load an ``hf:`` anchor (see :func:`stitchframe_transformers.adapter.load_hf`)."""
    from .adapter import load_hf as load

    return load(identifier, options, registries, structure_only=structure_only)


def load_hf_config(identifier: str, options: HFConfigOptions, registries: Any = None, *,
                   structure_only: bool = False) -> Any:
    """Build an ``hf-config:`` anchor (see :func:`stitchframe_transformers.adapter.load_hf_config`)."""
    from .adapter import load_hf_config as load

    return load(identifier, options, registries, structure_only=structure_only)


def load_text_classification(options: Any, preprocess: Any) -> Any:
    """Load the ``text_classification`` dataset (see :mod:`stitchframe_transformers.data`)."""
    from .data import load_text_classification as load

    return load(options, preprocess)


@hookimpl
def stitchframe_register_anchor_adapters(register) -> None:
    """Register ``hf`` and ``hf-config``."""
    register("hf", load_hf, options=HFOptions, check_identifier="stitchframe_transformers.checks:check_hf_identifier")
    register("hf-config", load_hf_config, options=HFConfigOptions,
             check_identifier="stitchframe_transformers.checks:check_hf_config_identifier")


@hookimpl
def stitchframe_register_datasets(register) -> None:
    """Register ``text_classification``."""
    register("text_classification", load_text_classification, options=TextClassificationOptions)
