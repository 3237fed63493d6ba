from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from stitchframe import CheckpointError
from stitchframe import checkpoint as ck


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-2, "name": "a"},
                             {"params": list(model[1].parameters()) + list(model[2].parameters()), "lr": 1e-3}])
    return model, opt


def step(model, opt, n: int = 1):
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()


def save(directory, model, opt, step_no, **kw):
    return ck.save_checkpoint(directory, step=step_no, model=model, optimizer=opt, state={"note": step_no}, **kw)


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = model_and_optimizer()
    step(model, opt, 3)
    random.seed(4)
    np.random.seed(4)
    path = save(tmp_path, model, opt, 3)
    expected_rng = (torch.rand(3), random.random(), np.random.rand())
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "state.json", "state.safetensors"]

    other, other_opt = model_and_optimizer(seed=1)
    loaded = ck.load_checkpoint(tmp_path, model=other, optimizer=other_opt)
    assert loaded.path == path and loaded.state["note"] == 3 and loaded.state["step"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    ck.restore_rng(loaded.rng_tensors, loaded.state["rng"])
    assert torch.equal(torch.rand(3), expected_rng[0])
    assert random.random() == expected_rng[1] and np.random.rand() == expected_rng[2]
    # the optimizer continues identically
    torch.manual_seed(9)
    step(model, opt)
    torch.manual_seed(9)
    step(other, other_opt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    assert other_opt.param_groups[0]["name"] == "a"


def test_keeps_only_the_newest_checkpoints(tmp_path):
    model, opt = model_and_optimizer()
    for s in (1, 2, 3, 4):
        save(tmp_path, model, opt, s, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert ck.latest_checkpoint(tmp_path).name == "step-00000004"
    assert save(tmp_path, model, opt, 4).name == "step-00000004"  # same step again: no-op
    assert ck.clear_checkpoints(tmp_path) == 2 and ck.latest_checkpoint(tmp_path) is None


def test_a_crash_while_writing_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    model, opt = model_and_optimizer()
    save(tmp_path, model, opt, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, opt)

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name != "latest"] == ["step-00000001"]
    fresh, fresh_opt = model_and_optimizer(seed=3)
    assert ck.load_checkpoint(tmp_path, model=fresh, optimizer=fresh_opt).state["step"] == 1
    for k, v in before.items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_a_crash_before_the_pointer_moves_keeps_the_old_latest(tmp_path, monkeypatch):
    model, opt = model_and_optimizer()
    save(tmp_path, model, opt, 1)
    real = ck.write_json

    def crash_on_pointer(path, data):
        if path.name == ck.LATEST:
            raise KeyboardInterrupt("killed before the switch")
        return real(path, data)

    monkeypatch.setattr(ck, "write_json", crash_on_pointer)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    assert ck.latest_checkpoint(tmp_path).name == "step-00000001"
    ck.load_checkpoint(tmp_path, model=model, optimizer=opt)
    save(tmp_path, model, opt, 2)  # the orphan folder is replaced
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"


def test_corrupt_checkpoints_give_clear_errors(tmp_path):
    model, opt = model_and_optimizer()
    path = save(tmp_path, model, opt, 1)
    blob = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt or truncated"):
        ck.load_checkpoint(tmp_path, model=model, optimizer=opt)
    (tmp_path / "latest").write_text(json.dumps({"checkpoint": "step-00000009"}))
    with pytest.raises(CheckpointError, match="names 'step-00000009', which does not exist"):
        ck.latest_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ck.latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ck.load_checkpoint(tmp_path / "nowhere", model=model)


def test_optimizer_state_of_another_model_is_rejected(tmp_path):
    model, opt = model_and_optimizer()
    step(model, opt)
    save(tmp_path, model, opt, 1)
    other_opt = torch.optim.AdamW(model.parameters())  # one group instead of two
    with pytest.raises(CheckpointError, match="does not fit this model's parameter groups"):
        ck.load_checkpoint(tmp_path, model=model, optimizer=other_opt)
