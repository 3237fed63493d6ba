"""The whole build under ``torchrun``: two real gloo processes on CPU, against single-process builds.

``torchrun --nproc_per_node 2 -m stitchframe.cli build`` must give what one
process gives (weights to float rounding, the same route table, and an
evaluation split over the ranks that equals a single-process evaluation of
the same weights byte for byte), stop cleanly on SIGTERM and resume to
exactly the uninterrupted result.  Errors found by rank 0 stop every rank.
A task with layers of its own trains under DDP and is evaluated split over
the ranks the same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stitchframe import build, evaluate_build, load_registries, load_snnet, parse_spec
from stitchframe.outputs import partial_dir
from tests import tiny
from tests._training import assert_equivalent_training

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ["--plugin", "tests.tiny:TinyPlugin"]
#: 4 steps per epoch (64 images, global batch 16 = 8 per rank), 32 steps: long enough to SIGTERM in the middle.
SPEC = {
    "anchors": ["tiny:vit32", {"source": "tiny:vit48", "options": {"seed": 1}}],
    "stitch": {"space": "snnet"},
    "calibration": {"batches": 2},
    "data": {"name": "synthetic", "options": {"train_size": 64, "val_size": 40}},
    "train": {"epochs": 8, "batch_size": 16, "lr": 1e-3, "log_every": 1, "keep_checkpoints": 1},
    "eval": {"batch_size": 16},  # 3 batches: rank 0 evaluates two, rank 1 one
}
TOTAL_STEPS = 32


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "STITCHFRAME_LOAD_PLUGINS": ""}


def _torchrun(*args: str, plugins: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "stitchframe.cli", *PLUGIN, *(a for p in plugins for a in ("--plugin", p)), "build", *args]


def _run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_build(tmp_path_factory):
    """One uninterrupted two-process build (the reference of the tests below)."""
    root = tmp_path_factory.mktemp("ddp")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    proc = _run(_torchrun(str(spec), "--output", str(root / "out")))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return spec, root / "out", proc.stdout


def _routes(out: Path) -> list[dict]:
    return json.loads((out / "routes.json").read_text())["routes"]


def test_torchrun_build_equals_a_single_process_build(ddp_build, regs, tmp_path):
    spec, out, stdout = ddp_build
    assert stdout.count(f"wrote {out}") == 1 and stdout.count("On synthetic") == 1  # rank 0 alone reports
    assert not partial_dir(out).exists()
    single = build(parse_spec(SPEC), output=tmp_path / "single", registries=regs)

    ddp_net = load_snnet(out, regs)
    assert_equivalent_training(single.snnet.state_dict(), ddp_net.state_dict())
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["train"]["steps"] == TOTAL_STEPS and manifest["train"]["routes"] == single.train_result["routes"]
    assert manifest["train"]["losses"] == pytest.approx(single.train_result["losses"], abs=1e-5)

    routes, ref = _routes(out), _routes(tmp_path / "single")
    assert [(r["route"], r["flops"], r["params"]) for r in routes] == [(r["route"], r["flops"], r["params"]) for r in ref]
    assert [r["accuracy"] for r in routes] == pytest.approx([r["accuracy"] for r in ref], abs=2.5)  # 1 of 40 images
    assert [r["loss"] for r in routes] == pytest.approx([r["loss"] for r in ref], abs=1e-4)
    assert manifest["evaluation"]["batches"] == 3
    assert manifest["evaluation"]["block_forwards"] == single.evaluation.block_forwards  # summed over the ranks

    # the split evaluation, gathered, is a single-process evaluation of the same weights, byte for byte
    again = evaluate_build(out, registries=regs)
    assert [(r.accuracy, r.loss) for r in again.routes] == [(r["accuracy"], r["loss"]) for r in routes]
    jsonl = (out / "checkpoints" / "evaluation.jsonl").read_text()
    assert jsonl == (out / "evaluation" / "progress.jsonl").read_text()
    assert len(jsonl.splitlines()) == 1 + 3


def test_torchrun_build_of_cnns_in_channels_last_equals_a_single_process_build(regs, tmp_path):
    """CNN anchors train in channels_last (``memory_format: auto``); DDP's gradient buckets must follow it."""
    raw = {**SPEC, "anchors": ["tiny:cnn8", {"source": "tiny:cnn16", "options": {"seed": 1}}],
           "train": {**SPEC["train"], "epochs": 2, "freeze": ["batchnorm"]}}  # per-rank batch statistics differ
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    proc = _run(_torchrun(str(tmp_path / "spec.yaml"), "--output", str(tmp_path / "ddp")))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "strides do not match" not in proc.stderr  # DDP's warning when buckets and gradients differ in layout
    single = build(parse_spec(raw), output=tmp_path / "single", registries=regs)
    ddp_net = load_snnet(tmp_path / "ddp", regs)
    conv = dict(ddp_net.named_modules())["anchors.cnn16.blocks.1.conv"].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert_equivalent_training(single.snnet.state_dict(), ddp_net.state_dict())


def test_torchrun_build_resumes_after_sigterm(ddp_build, regs, tmp_path):
    spec, reference, _ = ddp_build
    out = tmp_path / "out"
    proc = subprocess.Popen(_torchrun(str(spec), "--output", str(out)), cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(240, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("train step 2/"):
                proc.send_signal(signal.SIGTERM)  # to torchrun, as Slurm or Ctrl-C would; it passes it to the ranks
        proc.wait()
    finally:
        watchdog.cancel()
    log = "".join(lines)
    assert proc.returncode != 0, log[-3000:]
    assert log.count("error: Build interrupted by SIGTERM during training at step") == 1, log[-3000:]  # rank 0
    partial = partial_dir(out)
    assert not out.exists() and (partial / "checkpoints" / "latest").is_file()
    stopped = json.loads((partial / "checkpoints" / "latest").read_text())["step"]
    assert 2 <= stopped < TOTAL_STEPS

    # an evaluation cut short after its first batch resumes too (the weights will be the reference's)
    header, first = (reference / "checkpoints" / "evaluation.jsonl").read_text().splitlines()[:2]
    (partial / "checkpoints" / "evaluation.jsonl").write_text(f"{header}\n{first}\n")

    resumed = _run(_torchrun(str(spec), "--output", str(out), "--resume"))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"Resuming from {partial / 'checkpoints'}/step-{stopped:08d}" in resumed.stdout
    a, b = load_file(str(out / "snnet.safetensors")), load_file(str(reference / "snnet.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ after resume"
    assert _routes(out) == _routes(reference)
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["evaluation"]["resumed_batches"] == 1 and manifest["train"]["steps"] == TOTAL_STEPS
    assert (out / "checkpoints" / "evaluation.jsonl").read_text() == (
        reference / "checkpoints" / "evaluation.jsonl").read_text()


def test_torchrun_build_of_a_task_with_layers_of_its_own(pm, tmp_path):
    """The task's model trains under DDP, rank 0 alone writes task.safetensors, and evaluate_task_routes splits
    the batches over the ranks: gathered, they are a single-process evaluation of the same weights."""
    pm.register_plugin(tiny.TinyPlugin, name="tiny")
    pm.register_plugin(tiny.TinyTaskPlugin, name="tiny-task")
    regs = load_registries(pm)
    spec_dict = {**SPEC, "task": {"name": "rescaled"}, "train": {**SPEC["train"], "epochs": 2}}  # 8 steps
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict))
    out = tmp_path / "out"
    proc = _run(_torchrun(str(spec), "--output", str(out), plugins=("tests.tiny:TinyTaskPlugin",)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count(f"wrote {out}") == 1 and not partial_dir(out).exists()
    single = build(parse_spec(spec_dict), output=tmp_path / "single", registries=regs)

    a, b = load_file(str(out / "task.safetensors")), load_file(str(tmp_path / "single" / "task.safetensors"))
    assert list(a) == ["scale"] and not torch.equal(a["scale"], torch.ones(10))  # the task's layer trained
    assert_equivalent_training({**single.snnet.state_dict(), **b},
                               {**load_snnet(out, regs).state_dict(), **a})
    routes, ref = _routes(out), _routes(tmp_path / "single")
    assert json.loads((out / "routes.json").read_text())["metric"] == "top1"
    assert [r["loss"] for r in routes] == pytest.approx([r["loss"] for r in ref], abs=1e-4)
    assert all(r["top1"] == r["accuracy"] for r in routes)

    again = evaluate_build(out, registries=regs)  # one process, the same weights
    assert [(r.accuracy, r.loss) for r in again.routes] == [(r["accuracy"], r["loss"]) for r in routes]
    jsonl = (out / "checkpoints" / "evaluation.jsonl").read_text()
    assert jsonl == (out / "evaluation" / "progress.jsonl").read_text() and len(jsonl.splitlines()) == 1 + 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(spec: Path, outputs: tuple[Path, Path]) -> list[subprocess.CompletedProcess]:
    """Two ranks started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR, ...), each its own --output.

    Ranks on two nodes see two different folders at the same path when the
    output is node-local; two paths on one machine stand for that here.
    """
    port = str(_free_port())
    procs = []
    for rank, out in enumerate(outputs):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "stitchframe.cli", *PLUGIN, "build", str(spec),
                                       "--output", str(out)], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=240), *p.communicate()) for p in procs]


def test_every_rank_stops_on_rank_zeros_errors_and_needs_a_shared_output(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("not a build")
    rank0, rank1 = _two_ranks(spec, (taken, taken))
    assert rank0.returncode == rank1.returncode == 2, rank0.stderr + rank1.stderr
    assert "is not empty and is not a stitchframe build" in rank0.stderr and "error:" not in rank1.stderr

    rank0, rank1 = _two_ranks(spec, (tmp_path / "node0" / "out", tmp_path / "node1" / "out"))
    assert rank0.returncode == rank1.returncode == 2, rank0.stderr + rank1.stderr
    assert "rank(s) 1 (host" in rank0.stderr and "must be on a file system every node shares" in rank0.stderr
    assert "error:" not in rank1.stderr
    assert not partial_dir(tmp_path / "node0" / "out").exists() and not (tmp_path / "node1").exists()
