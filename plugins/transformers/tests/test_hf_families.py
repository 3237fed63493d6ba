"""Anchor routes equal the Hugging Face models' own outputs, for every supported family.

Each tiny model is built from a config, saved with ``save_pretrained`` and
loaded back through ``hf:<folder>``, so the offline local-folder path is what
is tested.  Text inputs carry a padding mask; only positions where the model's
own output is defined (valid tokens) are compared.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from hf_tiny import tiny_config

import stitchframe
from stitchframe import AnchorSpec, load_anchor

CASES = {
    # name: (model class, model_type, head, output attribute)
    "bert-hidden": (T.BertModel, "bert", "hidden", "last_hidden_state"),
    "bert-cls": (T.BertForSequenceClassification, "bert", "classification", "logits"),
    "roberta-hidden": (T.RobertaModel, "roberta", "hidden", "last_hidden_state"),
    "roberta-cls": (T.RobertaForSequenceClassification, "roberta", "classification", "logits"),
    "distilbert-hidden": (T.DistilBertModel, "distilbert", "hidden", "last_hidden_state"),
    "distilbert-cls": (T.DistilBertForSequenceClassification, "distilbert", "classification", "logits"),
    "vit-hidden": (T.ViTModel, "vit", "hidden", "last_hidden_state"),
    "vit-cls": (T.ViTForImageClassification, "vit", "classification", "logits"),
    "deit-teacher-cls": (T.DeiTForImageClassificationWithTeacher, "deit", "classification", "logits"),
    "gpt2-lm": (T.GPT2LMHeadModel, "gpt2", "lm", "logits"),
    "gpt2-cls": (T.GPT2ForSequenceClassification, "gpt2", "classification", "logits"),
    "llama-lm": (T.LlamaForCausalLM, "llama", "lm", "logits"),
    "llama-cls": (T.LlamaForSequenceClassification, "llama", "classification", "logits"),
}


def _saved(tmp_path_factory, case: str, attn: str):
    cls, model_type, _, _ = CASES[case]
    extra = {"num_labels": 3} if "cls" in case else {}
    if case == "gpt2-cls":
        extra["pad_token_id"] = 0
    config = T.AutoConfig.for_model(model_type, **tiny_config(model_type, **extra))
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = cls(config).eval()
    folder = tmp_path_factory.mktemp(f"{case}-{attn}")
    model.save_pretrained(folder)
    return model, folder


def _reference(model, case, inputs):
    kwargs = dict(inputs) if isinstance(inputs, dict) else {"pixel_values": inputs}
    if CASES[case][1] == "gpt2":
        kwargs["use_cache"] = False  # GPT-2 defaults to a KV cache, whose concatenation reorders float sums
    return getattr(model(**kwargs), CASES[case][3])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("case", list(CASES))
def test_anchor_route_equals_the_hf_model(case, attn, hf_regs, text_batch, tmp_path_factory):
    model, folder = _saved(tmp_path_factory, case, attn)
    _, model_type, head, _ = CASES[case]
    anchor = load_anchor(AnchorSpec(source=f"hf:{folder}", options={"head": "auto", "attn_implementation": attn}), hf_regs)
    assert anchor.family == model_type and anchor.source == f"hf:{folder}"
    assert type(anchor.head).__name__ == {
        "hidden": "HiddenHead", "lm": "LMHead", "classification": ("LastTokenHead" if model_type in ("gpt2", "llama")
                                                                    else "TokenClassifierHead")}[head]
    image = model_type in ("vit", "deit")
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) if image else text_batch
    with torch.no_grad():
        out, ref = anchor(inputs), _reference(model, case, inputs)
    assert out.shape == ref.shape
    if ref.dim() == 3 and not image:  # per-token outputs: padded positions are undefined
        valid = text_batch["attention_mask"].bool()
        out, ref = out[valid], ref[valid]
    assert torch.equal(out, ref), (out - ref).abs().max()


@pytest.mark.parametrize(
    "model_type,layout,prefix,grid",
    [("bert", "sequence", 0, None), ("llama", "sequence", 0, None), ("vit", "tokens", 1, (4, 4)),
     ("deit", "tokens", 2, (4, 4))],
)
def test_activation_specs(model_type, layout, prefix, grid, hf_regs):
    anchor = load_anchor(
        AnchorSpec(source=f"hf-config:{model_type}", options={"config": tiny_config(model_type, depth=3)}), hf_regs
    )
    assert anchor.depth == 3
    for pos in anchor.graph.positions():
        spec = anchor.graph.spec_at(pos)
        assert (spec.layout, spec.prefix, spec.grid, spec.channels) == (layout, prefix, grid, 32)
        if layout == "sequence":
            assert spec.length is None  # variable-length text
    assert anchor.graph.flops > 0 and all(b.flops > 0 for b in anchor.graph.blocks)
    assert anchor.uses_context == (layout == "sequence")


def test_context_is_built_once_per_input_and_carries_masks(hf_regs, text_batch):
    anchor = load_anchor(
        AnchorSpec(source="hf-config:llama", options={"config": tiny_config("llama", depth=3)}), hf_regs
    )
    calls = []
    anchor.context.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        ctx = anchor.prepare(text_batch)
        anchor(text_batch)
    assert len(calls) == 2  # one explicit prepare, one per forward; never per block
    kwargs = ctx.layer_kwargs
    assert set(kwargs) == {"attention_mask", "position_ids", "position_embeddings"}
    mask = kwargs["attention_mask"]  # sdpa: boolean [B, 1, L, L], causal and padded
    assert mask.dtype == torch.bool and mask.shape == (3, 1, 11, 11)
    assert not mask[0, 0, 2, 3] and mask[0, 0, 3, 2]  # no looking ahead
    assert not mask[2, 0, 6, 5] and mask[2, 0, 3, 2]  # padding of row 2 (4 tokens) is masked
    cos, _sin = kwargs["position_embeddings"]
    assert cos.shape[-2:] == (11, 8)  # head_dim = 32 / 4 heads and torch.equal(ctx.position_ids, torch.arange(11)[None])


def test_causal_models_do_not_look_ahead(hf_regs, text_batch):
    anchor = load_anchor(AnchorSpec(source="hf-config:gpt2", options={"config": tiny_config("gpt2")}), hf_regs)
    ids = text_batch["input_ids"][:1].clone()
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 100 + 3
    with torch.no_grad():
        a, b = anchor({"input_ids": ids}), anchor({"input_ids": changed})
    assert torch.equal(a[:, :6], b[:, :6]) and not torch.equal(a[:, 6:], b[:, 6:])


def test_pooled_head_is_the_masked_mean(hf_regs, text_batch):
    options = {"config": tiny_config("bert"), "seed": 3}
    hidden = load_anchor(AnchorSpec(source="hf-config:bert", options={**options, "head": "hidden"}), hf_regs)
    pooled = load_anchor(AnchorSpec(source="hf-config:bert", options={**options, "head": "pooled"}), hf_regs)
    normed = load_anchor(
        AnchorSpec(source="hf-config:bert", options={**options, "head": "pooled", "normalize": True}), hf_regs
    )
    with torch.no_grad():
        h = hidden(text_batch)
        m = text_batch["attention_mask"].unsqueeze(-1).float()
        mean = (h * m).sum(1) / m.sum(1)
        assert torch.allclose(pooled(text_batch), mean, atol=1e-6)
        assert torch.allclose(normed(text_batch), torch.nn.functional.normalize(mean, dim=1), atol=1e-6)


def test_text_inputs_must_be_a_tokenizer_mapping(hf_regs):
    anchor = load_anchor(AnchorSpec(source="hf-config:bert", options={"config": tiny_config("bert")}), hf_regs)
    with pytest.raises(stitchframe.ShapeMismatchError, match="input_ids"):
        anchor(torch.zeros(2, 5, dtype=torch.long))


def test_block_paths_point_into_the_original_model(hf_regs):
    bert = load_anchor(AnchorSpec(source="hf-config:bert", options={"config": tiny_config("bert")}), hf_regs)
    llama = load_anchor(AnchorSpec(source="hf-config:llama", options={"config": tiny_config("llama")}), hf_regs)
    assert [b.path for b in bert.graph.blocks] == ["encoder.layer.0", "encoder.layer.1"]
    assert bert.graph.stem.path == "embeddings"
    assert [b.path for b in llama.graph.blocks] == ["model.layers.0", "model.layers.1"]
    assert llama.graph.stem.path == "model.embed_tokens"
