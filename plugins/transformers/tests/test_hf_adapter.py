"""The ``hf:`` and ``hf-config:`` adapters: registration, locations, options, errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from hf_tiny import tiny_config

import stitchframe
from stitchframe import AnchorSpec, PluginError, SpecError, StitchframeError, load_anchor, parse_spec


def _load(source, regs, **options):
    return load_anchor(AnchorSpec(source=source, options=options), regs)


def test_registered_through_the_entry_point():
    regs = stitchframe.load_registries(stitchframe.get_plugin_manager())
    assert regs.anchor_adapters.get("hf").plugin == "transformers"
    assert regs.anchor_adapters.get("hf-config").plugin == "transformers"
    assert regs.datasets.get("text_classification").plugin == "transformers"
    assert not [p for p in regs.problems if p.plugin == "transformers"]


def test_hf_config_inline_is_seeded(hf_regs, text_batch):
    cfg = tiny_config("bert")
    a, b = _load("hf-config:bert", hf_regs, config=cfg, seed=1), _load("hf-config:bert", hf_regs, config=cfg, seed=1)
    c = _load("hf-config:bert", hf_regs, config=cfg, seed=2)
    assert a.name == "bert" and a.source == "hf-config:bert" and a.family == "bert"
    with torch.no_grad():
        assert torch.equal(a(text_batch), b(text_batch))
        assert not torch.allclose(a(text_batch), c(text_batch))
    state = torch.random.get_rng_state()
    _load("hf-config:bert", hf_regs, config=cfg, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # loading leaves the global RNG alone


def test_hf_config_from_a_file_or_folder(hf_regs, tmp_path):
    T.AutoConfig.for_model("llama", **tiny_config("llama")).save_pretrained(tmp_path / "tiny-llama")
    from_folder = _load(f"hf-config:{tmp_path / 'tiny-llama'}", hf_regs)
    from_file = _load(f"hf-config:{tmp_path / 'tiny-llama' / 'config.json'}", hf_regs, config={"num_hidden_layers": 3})
    assert from_folder.name == "tiny_llama" and from_folder.depth == 2 and from_file.depth == 3
    assert type(from_folder.head).__name__ == "LMHead"  # decoders default to the LM head
    with pytest.raises(SpecError, match="contradicts"):
        _load(f"hf-config:{tmp_path / 'tiny-llama'}", hf_regs, config={"model_type": "bert"})


def test_unsupported_model_type_lists_the_families(hf_regs):
    with pytest.raises(SpecError, match="supported: bert, deit, distilbert, gpt2, llama, roberta, vit"):
        _load("hf-config:t5", hf_regs, config={"d_model": 32})
    with pytest.raises(SpecError, match="supported"):
        _load("hf-config:not_a_model", hf_regs)


def test_head_choices(hf_regs):
    cfg = tiny_config("bert")
    assert type(_load("hf-config:bert", hf_regs, config=cfg).head).__name__ == "HiddenHead"
    cls = _load("hf-config:bert", hf_regs, config=cfg, head="classification", num_labels=4)
    with torch.no_grad():
        assert cls({"input_ids": torch.tensor([[5, 6, 7]])}).shape == (1, 4)
    with pytest.raises(SpecError, match="head 'lm' needs a decoder-only model"):
        _load("hf-config:bert", hf_regs, config=cfg, head="lm")
    with pytest.raises(SpecError, match=r"anchors\[0\]\.options\.head"):
        _load("hf-config:bert", hf_regs, config=cfg, head="logits")


def test_layers_option_keeps_a_subset(hf_regs, text_batch):
    cfg = tiny_config("bert", depth=4)
    full = _load("hf-config:bert", hf_regs, config=cfg)
    every_other = _load("hf-config:bert", hf_regs, config=cfg, layers=[0, 2])
    assert every_other.depth == 2
    with torch.no_grad():
        ctx = full.prepare(text_batch)
        x = full.run_stem(text_batch, ctx)
        x = full.blocks[2](full.blocks[0](x, ctx), ctx)
        assert torch.equal(every_other(text_batch), x)
    with pytest.raises(SpecError, match=r"hf-config:bert: options.layers \[0, 7\]"):
        _load("hf-config:bert", hf_regs, config=cfg, layers=[0, 7])


def test_hub_ids_fail_offline_with_a_hint(hf_regs):
    with pytest.raises(StitchframeError, match="Hugging Face Hub.*hf download"):
        _load("hf:stitchframe-no-such-org/no-such-model", hf_regs)


def test_bad_locations(hf_regs, tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        _load(f"hf:{tmp_path / 'missing'}", hf_regs)
    with pytest.raises(SpecError, match="package 'no_such_package_xyz' is not installed"):
        _load("hf:package:no_such_package_xyz/model", hf_regs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StitchframeError, match="cannot load the model"):
        _load(f"hf:{tmp_path / 'empty'}", hf_regs)


def test_preprocess_of_text_and_image_models(hf_regs, tmp_path):
    text = _load("hf-config:gpt2", hf_regs, config=tiny_config("gpt2"), max_length=500)
    assert text.preprocess.modality == "text" and text.preprocess.max_length == 64  # capped by n_positions
    assert text.example_inputs["input_ids"].shape == (1, 64)
    with pytest.raises(SpecError, match="trace_length 65 exceeds the model's 64 positions"):
        _load("hf-config:gpt2", hf_regs, config=tiny_config("gpt2"), trace_length=65)
    T.AutoConfig.for_model("vit", **tiny_config("vit")).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4] * 3, "image_std": [0.2] * 3}))
    image = _load(f"hf-config:{tmp_path}", hf_regs)
    assert image.preprocess.modality == "image" and image.preprocess.input_size == (3, 32, 32)
    assert image.preprocess.mean == (0.4, 0.4, 0.4) and image.preprocess.std == (0.2, 0.2, 0.2)


def test_adapter_options_are_validated_in_specs(hf_regs, tmp_path):
    spec = parse_spec({"anchors": [{"source": "hf-config:bert", "options": {"dtype": "float8"}}]})
    with pytest.raises(SpecError, match=r"anchors\[0\]\.options\.dtype"):
        stitchframe.validate_spec(spec, hf_regs)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    ok = parse_spec({"anchors": [{"source": f"hf:{tmp_path}", "options": {"layers": [0, 2], "head": "pooled"}}]})
    assert stitchframe.validate_spec(ok, hf_regs) == []


def _validate(source, regs, **options):
    return stitchframe.validate_spec(parse_spec({"anchors": [{"source": source, "options": options}]}), regs)


def test_validate_checks_hf_sources_without_loading_a_model(hf_regs, tmp_path):
    """A missing folder or config, an unsupported model type, a Hub id not cached while offline: errors at validate."""
    with pytest.raises(SpecError, match=r"anchors\[0\] \('hf:/no/such/model'\): hf:/no/such/model: local path"):
        _validate("hf:/no/such/model", hf_regs)
    with pytest.raises(SpecError, match="holds no config.json; point at a folder saved with save_pretrained"):
        _validate(f"hf:{tmp_path}", hf_regs)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(SpecError, match=r"model type 't5' .* is not supported by stitchframe-transformers; supp"):
        _validate(f"hf:{tmp_path}", hf_regs)
    with pytest.raises(SpecError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        _validate("hf:stitchframe-no-such-org/no-such-model", hf_regs)  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(SpecError, match="model type 'mamba' is not supported"):
        _validate("hf-config:mamba", hf_regs)
    with pytest.raises(SpecError, match="Python package 'no_such_package_xyz' is not installed"):
        _validate("hf:package:no_such_package_xyz/model", hf_regs)
    assert _validate("hf-config:bert", hf_regs, config=tiny_config("bert")) == []


def test_the_supported_model_types_are_the_families():
    """validate's torch-free list of model types is the adapters' own."""
    from stitchframe_transformers.checks import SUPPORTED_MODEL_TYPES
    from stitchframe_transformers.families import FAMILIES

    assert sorted(SUPPORTED_MODEL_TYPES) == sorted(FAMILIES)


def test_broken_models_are_reported_as_plugin_errors(hf_regs):
    # a config the model class rejects: the error names the plugin and the source
    with pytest.raises(PluginError, match="Plugin 'stitchframe_transformers' failed to load anchor 'hf-config:bert'.*multiple"):
        _load("hf-config:bert", hf_regs, config={**tiny_config("bert"), "num_attention_heads": 5})


def test_hub_ids_fail_at_once_without_a_network(hf_regs, monkeypatch):
    """No network and no HF_HUB_OFFLINE: offline mode is switched on, so no retry waits before the error."""
    import time

    import huggingface_hub.constants

    import stitchframe

    for var in stitchframe.hub.HUB_OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    stitchframe.hub._probed.clear()
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"the Hub client waited {s} s to retry"))
    with pytest.raises(StitchframeError, match="Hub is unreachable or HF_HUB_OFFLINE is set.*hf download"):
        _load("hf:stitchframe-no-such-org/no-such-model", hf_regs)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_the_plugin_meets_the_contract():
    """``check_plugin``: documented options, loaders taking ``structure_only`` (stitchframe.AnchorLoader)."""
    import stitchframe_transformers
    from stitchframe.testing import check_plugin

    regs = check_plugin(stitchframe_transformers, name="transformers")
    assert {"hf", "hf-config"} <= set(regs.anchor_adapters.names())
