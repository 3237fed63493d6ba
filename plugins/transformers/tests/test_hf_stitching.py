"""Stitched routes across HF text anchors: hand-written equality, masks, export, greedy generation."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from hf_tiny import VOCAB, tiny_config
from stitchframe_transformers.adapter import build_anchor
from stitchframe_transformers.families import FAMILIES
from stitchframe_transformers.options import HFOptions
from torch.export import Dim
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

import stitchframe


def _anchor(cls, model_type, name, width, depth, seed, head):
    torch.manual_seed(seed)
    model = cls(T.AutoConfig.for_model(model_type, **tiny_config(model_type, width=width, depth=depth))).eval()
    return model, build_anchor(model, FAMILIES[model_type], head, HFOptions(), name=name, source=f"test:{name}")


def _batches(n, seed=0, length=9):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (4, length), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        mask[3, 3:] = 0
        out.append({"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask})
    return out


@pytest.fixture(scope="module")
def bert_pair(hf_regs):
    small_model, small = _anchor(T.BertModel, "bert", "bert_small", 32, 2, 0, "pooled")
    base_model, base = _anchor(T.BertModel, "bert", "bert_base", 48, 4, 1, "pooled")
    net = stitchframe.build_snnet([base, small], space="cross", registries=hf_regs)
    counts = stitchframe.calibrate(net, _batches(3))
    return net.eval(), small_model, base_model, counts


@pytest.fixture(scope="module")
def llama_pair(hf_regs):
    small_model, small = _anchor(T.LlamaForCausalLM, "llama", "llama_small", 32, 2, 0, "lm")
    large_model, large = _anchor(T.LlamaForCausalLM, "llama", "llama_large", 64, 4, 1, "lm")
    net = stitchframe.build_snnet([small, large], space="cross", space_options={"directions": ["up"]},
                                  registries=hf_regs)
    stitchframe.calibrate(net, _batches(3, seed=1))
    return net.eval(), small_model, large_model


def test_bert_small_base_routes(bert_pair):
    net, _, _, counts = bert_pair
    kinds = sorted(r.meta["kind"] for r in net.routes)
    assert kinds.count("anchor") == 2 and "up" in kinds and "down" in kinds
    flops = {r.describe(): r.flops for r in net.routes}
    lo, hi = flops["bert_small[0:2]"], flops["bert_base[0:4]"]
    assert all(lo < r.flops < hi for r in net.routes if not r.is_anchor)
    valid_tokens = sum(int(b["attention_mask"].sum()) for b in _batches(3))
    assert set(counts.values()) == {valid_tokens}  # padded positions never enter least squares


def test_bert_stitched_route_equals_hand_written(bert_pair):
    net, small_model, base_model, _ = bert_pair
    route = next(r for r in net.routes if r.anchors == ("bert_small", "bert_base"))
    p, q = route.segments[0].end, route.segments[1].start
    layer = net.stitch_for(route, 0)
    inputs = _batches(1, seed=7)[0]
    mask = inputs["attention_mask"]
    with torch.no_grad():
        h = small_model.embeddings(input_ids=inputs["input_ids"])
        small_mask = create_bidirectional_mask(config=small_model.config, inputs_embeds=h, attention_mask=mask)
        for blk in small_model.encoder.layer[:p]:
            h = blk(h, small_mask)
        h = h @ layer.weight.T + layer.bias
        base_mask = create_bidirectional_mask(config=base_model.config, inputs_embeds=h, attention_mask=mask)
        for blk in base_model.encoder.layer[q:]:
            h = blk(h, base_mask)
        m = mask.unsqueeze(-1).float()
        expected = (h * m).sum(1) / m.sum(1)
        assert torch.allclose(net.forward_route(inputs, route), expected, atol=1e-6)


def test_bert_route_exports_with_a_padding_mask(bert_pair):
    net, *_ = bert_pair
    route = next(r for r in net.routes if r.anchors == ("bert_base", "bert_small"))
    module = net.export(route).eval()
    inputs = _batches(1, seed=8)[0]
    program = torch.export.export(module, (inputs,))
    with torch.no_grad():
        expected = net.forward_route(inputs, route)
        assert torch.allclose(program.module()(inputs), expected, atol=1e-6)


def test_llama_small_to_large_route_uses_the_large_anchors_context(llama_pair):
    net, small_model, large_model = llama_pair
    route = next(r for r in net.routes if not r.is_anchor)
    assert route.anchors == ("llama_small", "llama_large")
    p, q = route.segments[0].end, route.segments[1].start
    layer = net.stitch_for(route, 0)
    inputs = _batches(1, seed=9)[0]
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        h = small_model.model.embed_tokens(ids)
        for model, layers in ((small_model, small_model.model.layers[:p]), (large_model, large_model.model.layers[q:])):
            if model is large_model:
                h = h @ layer.weight.T + layer.bias
            causal = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=mask, cache=None,
                                        position_ids=pos)
            rotary = model.model.rotary_emb(h, pos)  # the large model's head_dim differs from the small one's
            for blk in layers:
                h = blk(h, attention_mask=causal, position_ids=pos, position_embeddings=rotary)
        expected = large_model.lm_head(large_model.model.norm(h))
        out = net.forward_route(inputs, route)
    assert out.shape == (4, 9, VOCAB)
    valid = mask.bool()
    assert torch.allclose(out[valid], expected[valid], atol=1e-5)


def test_llama_stitched_route_stays_causal(llama_pair):
    net, *_ = llama_pair
    route = next(r for r in net.routes if not r.is_anchor)
    ids = _batches(1, seed=10)[0]["input_ids"][:1]
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % (VOCAB - 3) + 3
    with torch.no_grad():
        a = net.forward_route({"input_ids": ids}, route)
        b = net.forward_route({"input_ids": changed}, route)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])


def _greedy(model, prompt, steps):
    ids = prompt
    for _ in range(steps):
        logits = model({"input_ids": ids})
        ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return ids


def test_greedy_generation_with_the_exported_route(llama_pair):
    """No KV cache: each step reruns the route on the whole prefix (what a single exported graph allows)."""
    net, *_ = llama_pair
    route = next(r for r in net.routes if not r.is_anchor)
    module = net.export(route).eval()
    prompt = _batches(1, seed=11)[0]["input_ids"][:1, :4]
    length = Dim("length", min=2, max=60)
    program = torch.export.export(module, ({"input_ids": prompt},), dynamic_shapes=({"input_ids": {1: length}},))
    with torch.no_grad():
        expected = _greedy(lambda x: net.forward_route(x, route), prompt, 5)
        assert torch.equal(_greedy(module, prompt, 5), expected)
        assert torch.equal(_greedy(program.module(), prompt, 5), expected)
    assert expected.shape == (1, 9) and torch.equal(expected[:, :4], prompt)


@pytest.mark.gpu
def test_text_routes_run_on_cuda_with_bf16_autocast(llama_pair):
    net = copy.deepcopy(llama_pair[0])
    route = next(r for r in net.routes if not r.is_anchor)
    inputs = _batches(1, seed=12)[0]
    with torch.no_grad():
        expected = net.forward_route(inputs, route)
        net.to("cuda")
        cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
        out = net.forward_route(cuda_inputs, route)
        valid = inputs["attention_mask"].bool()
        assert torch.allclose(out.cpu()[valid], expected[valid], atol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert torch.isfinite(net.forward_route(cuda_inputs, route)[valid.cuda()]).all()
        stitchframe.calibrate(net, [cuda_inputs])  # least squares accumulates on the CPU in float64


def test_text_snnet_trains_through_stitchframe_train(hf_regs, minilm_dir, tmp_path):
    """Dict batches from text_classification go through the core's training loop."""
    from stitchframe_transformers.data import build_text_datasets
    from stitchframe_transformers.data_options import TextClassificationOptions

    from stitchframe import AnchorSpec, TrainSpec, train_snnet

    def bert(width, depth, name):
        cfg = tiny_config("bert", width=width, depth=depth, vocab_size=30522)
        options = {"config": cfg, "head": "classification", "num_labels": 2, "tokenizer": str(minilm_dir)}
        return stitchframe.load_anchor(AnchorSpec(source="hf-config:bert", name=name, options=options), hf_regs)

    net = stitchframe.build_snnet([bert(32, 2, "small"), bert(48, 4, "base")], space="cross", registries=hf_regs)
    train, _, _, collate, _ = build_text_datasets(TextClassificationOptions(toy_size=60), net.anchors["small"].preprocess)
    stitchframe.calibrate(net, [collate([train[i] for i in range(16)])])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = train_snnet(net, train, TrainSpec(max_steps=4, batch_size=8), device="cpu",
                             checkpoint_dir=tmp_path, collate_fn=collate)
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    changed = {k.split(".")[0] for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    sampled_stitched = any(not net.routes[i].is_anchor for i in result.routes)
    assert "anchors" in changed and ("stitches" in changed) == sampled_stitched


def test_vit_into_deit_synthesises_both_prefix_tokens(hf_regs):
    """ViT (cls, 4x4 patches, width 32) -> DeiT (cls + distillation, 8x8 patches, width 48) and back."""
    vit_model, vit = _anchor(T.ViTForImageClassification, "vit", "vit", 32, 2, 0, "classification")
    deit_cfg = tiny_config("deit", width=48, depth=4, patch_size=4)
    torch.manual_seed(1)
    deit_model = T.DeiTForImageClassificationWithTeacher(T.AutoConfig.for_model("deit", **deit_cfg)).eval()
    deit = build_anchor(deit_model, FAMILIES["deit"], "classification", HFOptions(), name="deit", source="test:deit")
    assert vit.graph.spec_at(1).prefix == 1 and deit.graph.spec_at(1).prefix == 2
    assert deit.graph.spec_at(1).grid == (8, 8) and vit.graph.spec_at(1).grid == (4, 4)
    net = stitchframe.build_snnet([vit, deit], space="cross", registries=hf_regs)
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    stitchframe.calibrate(net, [images])
    net.eval()
    route = next(r for r in net.routes if r.anchors == ("vit", "deit"))
    p, q = route.segments[0].end, route.segments[1].start
    layer = net.stitch_for(route, 0)
    with torch.no_grad():
        t = vit_model.vit.embeddings(images[:2])
        for blk in vit_model.vit.layers[:p]:
            t = blk(t)
        cls, patches = t[:, :1], t[:, 1:]
        grid = patches.transpose(1, 2).reshape(2, 32, 4, 4)
        grid = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bilinear", align_corners=False)
        patches = grid.flatten(2).transpose(1, 2) @ layer.weight.T + layer.bias
        feats = torch.cat([t[:, 1:].mean(dim=1), cls.flatten(1)], dim=1)  # [mean of patches, cls]
        prefix = (feats @ layer.prefix_weight.T + layer.prefix_bias).reshape(2, 2, 48)
        h = torch.cat([prefix, patches], dim=1)
        for blk in deit_model.deit.layers[q:]:
            h = blk(h)
        h = deit_model.deit.layernorm(h)
        expected = (deit_model.cls_classifier(h[:, 0]) + deit_model.distillation_classifier(h[:, 1])) / 2
        assert torch.allclose(net.forward_route(images[:2], route), expected, atol=1e-5)
        for i in range(len(net.routes)):
            assert net.forward_route(images[:2], i).shape == (2, 2)
