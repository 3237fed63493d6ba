from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import stitchframe
from stitchframe import CheckpointError, SpecError, TrainingError
from stitchframe.checkpoint import latest_checkpoint, load_checkpoint
from stitchframe.objectives import output_logits, route_teachers, teacher_name, training_loss
from stitchframe.optim import build_optimizer, lr_factor
from stitchframe.spec import TrainSpec, parse_spec
from stitchframe.train import train
from tests import tiny
from tests._training import (
    DDP_SPEC,
    SignalAt,
    assert_equivalent_training,
    cnn_snnet,
    prototype_data,
    state_of,
    vit_snnet,
)

ROOT = Path(__file__).resolve().parents[1]


def run(net, data, cfg, tmp_path, **kw):
    kw.setdefault("checkpoint_dir", tmp_path / "ckpt")
    return train(net, data, cfg, device=torch.device("cpu"), **kw)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "cnn"])
def test_loss_decreases_on_a_learnable_task(family, tmp_path):
    net = vit_snnet() if family == "vit" else cnn_snnet()
    lr = 2e-3 if family == "vit" else 1e-2
    cfg = TrainSpec(epochs=8, batch_size=16, lr=lr, warmup_steps=2, sampling="flops_grouped", flops_groups=3)
    net.eval()
    before = state_of(net)
    result = run(net, prototype_data(128), cfg, tmp_path)
    assert result.steps == result.total_steps == 64 and result.epochs == 8 and result.stopped_early is None
    assert len(result.losses) == len(result.routes) == 64 and result.final_loss == result.losses[-1]
    early, late = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert late < 0.5 * early, result.losses
    assert set(result.routes) == set(range(len(net.routes)))  # one route per step, all of them reached
    assert result.checkpoint == latest_checkpoint(tmp_path / "ckpt")
    if family == "cnn":  # anchors train in train mode: BatchNorm statistics move
        key = "anchors.cnn16.blocks.0.bn.running_mean"
        assert not torch.equal(net.state_dict()[key], before[key])
    assert not any(m.training for m in net.modules()) and net.selected_id == 0  # mode, selection restored


def test_dict_inputs_and_hf_style_outputs(tmp_path):
    class DictStem(nn.Module):
        def __init__(self, embed):
            super().__init__()
            self.embed = embed

        def forward(self, inputs):
            return self.embed(inputs["pixel_values"])

    class HFHead(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            return SimpleNamespace(logits=self.head(x))

    anchors = []
    for i, d in enumerate((16, 32)):
        m = tiny.tiny_vit(d, 2, seed=i, classes=4)
        anchors.append(stitchframe.Anchor(
            f"vit{d}", stem=DictStem(m.embed), blocks=list(m.blocks), norm=m.norm, head=HFHead(m.head),
            layout="tokens", prefix=1, example_inputs={"pixel_values": torch.randn(1, 3, 16, 16)},
        ))
    regs = stitchframe.load_registries(stitchframe.get_plugin_manager(load_entrypoints=False))
    net = stitchframe.build_snnet(anchors, registries=regs)
    data = prototype_data(64)

    class AsDict(Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            x, y = data[i]
            return {"pixel_values": x}, y

    result = run(net, AsDict(), TrainSpec(epochs=2, batch_size=16, lr=1e-3, loss="distill"), tmp_path)
    assert result.steps == 8 and all(math.isfinite(v) for v in result.losses)


# ---------------------------------------------------------------------------
# exact resume
# ---------------------------------------------------------------------------
RESUME_SPEC = TrainSpec(
    epochs=2.5, batch_size=16, grad_accum=2, lr=1e-3, warmup_steps=3, grad_clip=1.0, loss="distill",
    distill_alpha=0.5, temperature=2.0, sampling="flops_grouped", flops_groups=2, checkpoint_every=4,
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    net = vit_snnet()
    result = run(net, prototype_data(80), RESUME_SPEC, tmp_path_factory.mktemp("full"))
    return state_of(net), result


def test_stop_and_resume_ends_bit_identical(uninterrupted, tmp_path):
    expected, full = uninterrupted
    assert full.steps == 13  # 5 steps per epoch, 2.5 epochs: the run ends mid-epoch
    data = prototype_data(80)
    net = vit_snnet()
    part = run(net, data, RESUME_SPEC, tmp_path, stop_after=7)  # stops mid-epoch 1
    assert part.stopped_early == "stop_after" and part.steps == 7 and part.checkpoint.name == "step-00000007"
    net = vit_snnet()  # a new process would start from the calibrated model again
    rest = run(net, data, RESUME_SPEC, tmp_path, resume=True)
    assert rest.steps == 13 and rest.stopped_early is None
    assert rest.losses == full.losses and rest.routes == full.routes
    assert_same_weights(state_of(net), expected)


class FailAt(Dataset):
    """Raises on the ``at``-th item access, like a crash mid-run."""

    def __init__(self, data, at):
        self.data, self.at, self.calls = data, at, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("disk went away")
        return self.data[i]


def test_resume_after_a_crash_continues_from_the_last_checkpoint(uninterrupted, tmp_path):
    expected, full = uninterrupted
    data = prototype_data(80)
    with pytest.raises(RuntimeError, match="disk went away"):
        run(vit_snnet(), FailAt(data, 16 * 10 + 5), RESUME_SPEC, tmp_path)  # during step 11
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-00000008"
    net = vit_snnet()
    rest = run(net, data, RESUME_SPEC, tmp_path, resume=True)
    assert rest.losses == full.losses
    assert_same_weights(state_of(net), expected)


def test_resume_refuses_a_changed_spec(uninterrupted, tmp_path):
    data = prototype_data(80)
    run(vit_snnet(), data, RESUME_SPEC, tmp_path, stop_after=4)
    changed = attrs.evolve(RESUME_SPEC, weight_decay=0.5, checkpoint_every=2)  # lr may change: RESUME_ADJUSTABLE
    with pytest.raises(CheckpointError, match=r"different train spec \(changed: weight_decay\)"):
        run(vit_snnet(), data, changed, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="seed=0.*this run has 1"):
        run(vit_snnet(), data, RESUME_SPEC, tmp_path, resume=True, seed=1)
    # only checkpoint_every changed: allowed
    assert run(vit_snnet(), data, attrs.evolve(RESUME_SPEC, checkpoint_every=2), tmp_path,
               resume=True, stop_after=5).steps == 5


def test_resume_without_a_checkpoint_starts_fresh_and_a_fresh_run_replaces_old_ones(tmp_path):
    data = prototype_data(32)
    cfg = TrainSpec(epochs=1, batch_size=16, lr=1e-3, checkpoint_every=1)
    assert run(vit_snnet(), data, cfg, tmp_path, resume=True).steps == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-00000001", "step-00000002"]
    run(vit_snnet(), data, TrainSpec(epochs=0.5, batch_size=16, lr=1e-3), tmp_path)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-00000001"]


class Augmented(Dataset):
    """Adds random noise drawn from the global torch RNG: a stand-in for random augmentation."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x + 0.1 * torch.randn_like(x), y


def test_data_loader_workers_do_not_change_the_result(tmp_path):
    cfg = TrainSpec(epochs=1, max_steps=3, batch_size=16, lr=1e-3)
    data = Augmented(prototype_data(64))
    a, b = vit_snnet(), vit_snnet()
    ra = run(a, data, cfg, tmp_path / "a")
    rb = run(b, data, cfg, tmp_path / "b", num_workers=2)
    assert ra.losses == rb.losses
    assert_same_weights(state_of(a), state_of(b))


# ---------------------------------------------------------------------------
# optimisation details
# ---------------------------------------------------------------------------
def test_grad_accumulation_matches_the_full_batch(tmp_path):
    cfg = TrainSpec(epochs=1, max_steps=4, batch_size=16, lr=1e-3)
    data = prototype_data(64)
    a, b = vit_snnet(), vit_snnet()
    ra = run(a, data, cfg, tmp_path / "a")
    rb = run(b, data, TrainSpec(epochs=1, max_steps=4, batch_size=16, grad_accum=2, lr=1e-3), tmp_path / "b")
    assert ra.routes == rb.routes
    assert ra.losses == pytest.approx(rb.losses, abs=1e-5)
    assert_equivalent_training(state_of(a), state_of(b))


def test_optimizer_groups_learning_rates_and_weight_decay():
    net = vit_snnet(calibrate=False)
    opt = build_optimizer(net, TrainSpec(lr=1e-4, weight_decay=0.1))
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"anchors/decay", "anchors/no_decay", "stitches/decay", "stitches/no_decay"}
    assert groups["anchors/decay"]["lr"] == 1e-4 and groups["stitches/decay"]["lr"] == pytest.approx(1e-3)
    assert groups["anchors/no_decay"]["weight_decay"] == 0.0 and groups["anchors/decay"]["weight_decay"] == 0.1
    no_decay = {id(p) for p in groups["anchors/no_decay"]["params"]}
    emb = net.anchors["vit16"].stem
    assert id(emb.cls_token) in no_decay and id(emb.pos_embed) in no_decay
    assert id(net.anchors["vit16"].norm.weight) in no_decay and id(emb.proj.weight) not in no_decay
    assert build_optimizer(net, TrainSpec(stitch_lr=5e-3)).param_groups[-1]["lr"] == 5e-3


def test_lr_schedule():
    assert [lr_factor(s, total=10, warmup=4, scheduler="cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, total=10, warmup=4, scheduler="cosine") == 1.0
    assert lr_factor(7, total=10, warmup=4, scheduler="cosine") == pytest.approx(0.5)
    assert lr_factor(9, total=10, warmup=4, scheduler="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))
    assert lr_factor(9, total=10, warmup=0, scheduler="constant") == 1.0


def test_freezing_anchors_trains_only_stitches_and_keeps_bn_statistics(tmp_path):
    net = cnn_snnet()
    before = state_of(net)
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    result = run(net, prototype_data(32), TrainSpec(epochs=3, batch_size=16, lr=1e-3, freeze=["anchors"]), tmp_path)
    after = state_of(net)
    for k in before:
        if k.startswith("anchors."):
            assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("stitches."))
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags  # restored afterwards
    assert len(result.losses) == 6  # anchor routes (nothing to train) still count as steps


def test_freezing_heads_and_stems(tmp_path):
    net = vit_snnet()
    before = state_of(net)
    run(net, prototype_data(32), TrainSpec(epochs=2, batch_size=16, lr=1e-3, freeze=["heads", "stems"]), tmp_path)
    after = state_of(net)
    frozen = [k for k in before if ".stem." in k or ".head." in k or ".norm." in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)


def test_freezing_everything_is_an_error(tmp_path):
    with pytest.raises(TrainingError, match=r"Nothing to train: train.freeze=\['anchors', 'stitches'\]"):
        run(vit_snnet(), prototype_data(32), TrainSpec(batch_size=16, freeze=["anchors", "stitches"]), tmp_path)


def test_losses_and_outputs():
    cfg = TrainSpec(loss="distill", distill_alpha=0.25, temperature=2.0)
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    ce = nn.functional.cross_entropy(logits, target)
    assert training_loss(logits, target, cfg, teacher=logits) == pytest.approx(0.75 * ce.item(), rel=1e-5)
    assert training_loss(logits, target, cfg, teacher=-logits) > 0.75 * ce
    assert training_loss(logits, target, TrainSpec()) == pytest.approx(ce.item())
    assert output_logits({"logits": logits}) is logits
    assert output_logits(SimpleNamespace(logits=logits)) is logits
    assert output_logits((logits, None)) is logits
    with pytest.raises(TrainingError, match="returned a str"):
        output_logits("nope")


def test_teacher_defaults_to_the_largest_anchor():
    net = vit_snnet(calibrate=False)
    assert teacher_name(net, TrainSpec(loss="distill")) == "vit32"
    assert teacher_name(net, TrainSpec(loss="distill", teacher="vit16")) == "vit16"
    with pytest.raises(SpecError, match="train.teacher: unknown anchor 'vit33'; did you mean 'vit32'"):
        teacher_name(net, TrainSpec(loss="distill", teacher="vit33"))


def test_teacher_end_is_each_stitched_routes_end_anchor():
    net = vit_snnet(calibrate=False)
    teachers = route_teachers(net, TrainSpec(loss="distill", teacher="end"))
    assert teachers == [None if r.is_anchor else r.segments[-1].anchor for r in net.routes]
    assert None in teachers and "vit32" in teachers
    assert route_teachers(net, TrainSpec(loss="distill")) == ["vit32"] * len(net.routes)
    assert route_teachers(net, TrainSpec(loss="ce", teacher="end")) == [None] * len(net.routes)


def test_teacher_end_distills_stitched_steps_from_their_end_anchor(tmp_path, monkeypatch):
    """Stitched steps run their end anchor as teacher; anchor steps run no teacher at all."""
    net = vit_snnet(calibrate=False)
    called: list[tuple[int, str]] = []
    for name, anchor in net.anchors.items():
        anchor.register_forward_hook(lambda m, i, o, name=name: called.append((net.selected_id, name)))
    cfg = TrainSpec(epochs=1, batch_size=16, lr=1e-3, loss="distill", teacher="end", anchor_share=0.5)
    result = run(net, prototype_data(64), cfg, tmp_path)
    expected = [(rid, net.routes[rid].segments[-1].anchor) for rid in result.routes if not net.routes[rid].is_anchor]
    assert called == expected and expected and len(expected) < result.steps


def test_new_train_spec_fields_parse():
    spec = parse_spec({"anchors": ["tiny:vit16"], "train": {"keep_checkpoints": 3, "label_smoothing": 0.1}})
    assert spec.train.keep_checkpoints == 3 and spec.train.label_smoothing == 0.1
    with pytest.raises(SpecError, match="keep_checkpoints"):
        parse_spec({"anchors": ["tiny:vit16"], "train": {"keep_checkpoints": 0}})


# ---------------------------------------------------------------------------
# robustness
# ---------------------------------------------------------------------------
def test_non_finite_loss_stops_with_the_last_good_checkpoint_intact(tmp_path):
    x, y = prototype_data(64).tensors
    x = x.clone()
    cfg = TrainSpec(epochs=1, batch_size=8, lr=1e-3, checkpoint_every=2)
    # find which samples step 5 (0-based) loads, and poison one of them
    from stitchframe.sampling import EpochOrder

    perm, _ = EpochOrder(64, batch_size=8, grad_accum=1, world_size=1, rank=0, seed=0).epoch_tables(0)
    x[perm[5 * 8]] = float("nan")
    net = vit_snnet()
    with pytest.raises(TrainingError, match=r"at step 5 \(epoch 0\.62\) on route \d+ .*the loss is nan.*step-00000004"):
        run(net, TensorDataset(x, y), cfg, tmp_path)
    good = latest_checkpoint(tmp_path / "ckpt")
    assert good.name == "step-00000004"
    state = load_checkpoint(good, model=vit_snnet()).state
    assert len(state["losses"]) == 4 and all(math.isfinite(v) for v in state["losses"])
    assert all(torch.isfinite(v).all() for v in state_of(net).values() if v.is_floating_point())


def test_non_finite_gradients_of_a_finite_loss_stop_before_the_step(tmp_path):
    net = vit_snnet()
    forwards = []
    net.register_forward_pre_hook(lambda *_: forwards.append(1))
    for p in net.parameters():  # from the 4th step on, every gradient is NaN although the loss stays finite
        p.register_hook(lambda g: g * float("nan") if len(forwards) > 3 else g)
    cfg = TrainSpec(epochs=1, batch_size=8, lr=1e-3, checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"at step 3 .*the gradient norm is nan.*step-00000002"):
        run(net, prototype_data(64), cfg, tmp_path)
    assert all(torch.isfinite(v).all() for v in state_of(net).values() if v.is_floating_point())


def _subprocess(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "STITCHFRAME_LOAD_PLUGINS": ""}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_sigterm_saves_a_checkpoint_and_returns(tmp_path):
    proc = _subprocess([sys.executable, "-m", "tests._training", "sigterm", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "result.json").read_text())
    assert info["stopped_early"] == "SIGTERM" and info["steps"] == 3 and info["sigterm_handler_restored"]
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-00000003"
    net = vit_snnet()
    load_checkpoint(tmp_path / "ckpt", model=net)
    assert_same_weights(state_of(net), load_file(str(tmp_path / "final.safetensors")))


def test_sigint_in_process_stops_cleanly_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    data = SignalAt(prototype_data(64), at=8 * 4 + 3, sig=signal.SIGINT)  # during step 5 (0-based 4)
    result = run(vit_snnet(), data, TrainSpec(epochs=1, batch_size=8, lr=1e-3), tmp_path)
    assert result.stopped_early == "SIGINT" and result.steps == 5
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-00000005"
    assert signal.getsignal(signal.SIGINT) is before


def test_ddp_with_two_processes_matches_a_single_process(tmp_path):
    proc = _subprocess([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "tests._training", "ddp", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "result.json").read_text())
    net = vit_snnet()
    single = run(net, prototype_data(96), DDP_SPEC, tmp_path / "single", seed=3)
    assert info["losses"] == pytest.approx(single.losses, abs=1e-5)
    ddp = load_file(str(tmp_path / "final.safetensors"))
    assert_equivalent_training(state_of(net), ddp)


def test_amp_is_off_on_cpu_unless_asked_for(tmp_path):
    from stitchframe.train import _amp_dtype

    assert _amp_dtype("auto", torch.device("cpu")) is None and _amp_dtype("off", torch.device("cpu")) is None
    net = vit_snnet()
    result = run(net, prototype_data(32), TrainSpec(epochs=2, batch_size=16, lr=1e-3, amp="bf16"), tmp_path)
    assert all(math.isfinite(v) for v in result.losses)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast, weights stay float32


@pytest.mark.gpu
def test_bf16_training_on_cuda(tmp_path):
    net = vit_snnet()
    before = state_of(net)
    result = train(net, prototype_data(128), TrainSpec(epochs=4, batch_size=16, lr=2e-3, amp="auto"),
                   device=torch.device("cuda"), checkpoint_dir=tmp_path / "ckpt")
    assert all(math.isfinite(v) for v in result.losses)
    assert sum(result.losses[-6:]) < sum(result.losses[:6])
    assert all(p.dtype == torch.float32 and p.is_cuda for p in net.parameters())  # autocast, not casting
    assert any(not torch.equal(before[k], v.cpu()) for k, v in net.state_dict().items())
    resumed = vit_snnet()
    load_checkpoint(tmp_path / "ckpt", model=resumed)
    assert_same_weights(state_of(resumed), {k: v.cpu() for k, v in net.state_dict().items()})


def test_progress_goes_to_plain_lines_when_not_a_terminal(tmp_path):
    import io

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    cfg = TrainSpec(epochs=1, batch_size=16, log_every=2)
    run(vit_snnet(), prototype_data(64), cfg, tmp_path, console=console)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("train step")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"]
    assert all("loss" in line and "img/s" in line for line in lines)


def test_one_ctrl_c_delivered_twice_is_one_stop_and_a_later_one_interrupts():
    from stitchframe.train import _StopSignals

    with _StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)  # from the terminal
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C passed on by torchrun: not a second one
        assert signals.received == "SIGINT"
        signals._first -= 2.0  # a second Ctrl-C, two seconds later
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
