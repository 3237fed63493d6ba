"""Exported routes of Hugging Face anchors rebuild alone: the config travels in the manifest, no folder, no Hub."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as T
from hf_tiny import VOCAB, tiny_config
from stitchframe_transformers.adapter import build_anchor
from stitchframe_transformers.families import FAMILIES
from stitchframe_transformers.options import HFOptions

import stitchframe


def _text(n=3, length=9):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def _anchor(cls, model_type, name, width, depth, seed, head):
    torch.manual_seed(seed)
    model = cls(T.AutoConfig.for_model(model_type, **tiny_config(model_type, width=width, depth=depth))).eval()
    return build_anchor(model, FAMILIES[model_type], head, HFOptions(), name=name, source=f"test:{name}")


CASES = {  # model class, model type, head, inputs
    "bert": (T.BertModel, "bert", "pooled", _text),
    "llama": (T.LlamaForCausalLM, "llama", "lm", _text),  # rotary tables: buffers state_dict leaves out
    "vit": (T.ViTForImageClassification, "vit", "classification",
            lambda: torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stitched_route_reloads_alone_bit_for_bit(case, hf_regs, tmp_path):
    cls, model_type, head, inputs = CASES[case]
    small = _anchor(cls, model_type, f"{case}_small", 32, 2, 0, head)
    large = _anchor(cls, model_type, f"{case}_large", 64, 4, 1, head)
    net = stitchframe.build_snnet([small, large], space="cross", registries=hf_regs).eval()
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    res = stitchframe.export_route(net, route=rid, dest=tmp_path / "r.safetensors", registries=hf_regs)
    anchors = json.loads(res.description.read_text())["anchors"]
    assert {a["source"] for a in anchors} == {"hf-config:"}  # the config is inline, whatever the anchor came from
    module = stitchframe.load_route(res.description, hf_regs)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(module(x), net.forward_route(x, rid))


def test_a_route_of_local_folders_loads_after_they_are_gone(hf_regs, tmp_path):
    folders = []
    for i, (width, depth) in enumerate(((32, 2), (48, 4))):
        torch.manual_seed(i)
        model = T.BertModel(T.AutoConfig.for_model("bert", **tiny_config("bert", width=width, depth=depth)))
        folders.append(tmp_path / f"bert{width}")
        model.save_pretrained(folders[-1])
    spec = stitchframe.parse_spec({
        "anchors": [{"source": f"hf:{f}", "name": f.name, "options": {"head": "pooled"}} for f in folders],
        "stitch": {"space": "cross"},
    })
    net = stitchframe.assemble(spec, hf_regs).eval()
    rid = next(i for i, r in enumerate(net.routes) if r.links)
    res = stitchframe.export_route(net, route=rid, dest=tmp_path / "deploy" / "r.safetensors", registries=hf_regs)
    for f in folders:
        shutil.rmtree(f)
    module = stitchframe.load_route(res.description, hf_regs)
    x = _text()
    with torch.no_grad():
        assert torch.equal(module(x), net.forward_route(x, rid))
