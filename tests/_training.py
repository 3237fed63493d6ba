"""Builders shared by the training tests, and a worker script for subprocess tests.

``python -m tests._training MODE OUT`` (or under ``torchrun``) trains a tiny
SN-Net and writes its final weights to ``OUT/final.safetensors`` (rank 0):

* ``ddp`` - a few steps, for comparison with a single-process run;
* ``sigterm`` - sends itself SIGTERM while loading a batch of step 3.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset, TensorDataset

import stitchframe
from stitchframe.distributed import cleanup_distributed, is_main_process
from stitchframe.spec import TrainSpec
from stitchframe.train import train
from tests import tiny


def vit_snnet(*, depth: int = 2, classes: int = 4, calibrate: bool = True) -> stitchframe.SNNet:
    """A fresh SN-Net of two tiny ViTs (widths 16 and 32), calibrated on random images."""
    regs = stitchframe.load_registries(stitchframe.get_plugin_manager(load_entrypoints=False))
    anchors = [
        tiny.vit_anchor(tiny.tiny_vit(d, depth, seed=i, classes=classes), f"vit{d}") for i, d in enumerate((16, 32))
    ]
    net = stitchframe.build_snnet(anchors, registries=regs)
    if calibrate:
        stitchframe.calibrate(net, [tiny.images(16, seed=3)])
    return net


def cnn_snnet(*, classes: int = 4, calibrate: bool = True) -> stitchframe.SNNet:
    """A fresh SN-Net of two tiny CNNs with BatchNorm (widths 8 and 16)."""
    regs = stitchframe.load_registries(stitchframe.get_plugin_manager(load_entrypoints=False))
    anchors = [tiny.cnn_anchor(tiny.tiny_cnn(w, seed=i, classes=classes), f"cnn{w}") for i, w in enumerate((8, 16))]
    net = stitchframe.build_snnet(anchors, registries=regs)
    if calibrate:
        stitchframe.calibrate(net, [tiny.images(16, seed=3)])
    return net


def prototype_data(n: int = 128, *, classes: int = 4, seed: int = 0) -> TensorDataset:
    """A learnable task: each class is a fixed random image, samples add noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 3, 16, 16, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = protos[y] + 0.5 * torch.randn(n, 3, 16, 16, generator=g)
    return TensorDataset(x, y)


def state_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor of a module's state."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_equivalent_training(a: dict, b: dict) -> None:
    """Weights of two equivalent runs that sum gradients in a different order agree to float rounding.

    Adam divides by ``sqrt(v)``, so where an element's true gradient is (near) zero it turns
    rounding noise into real steps of up to the learning rate.  Softmax ignores the key third
    of an attention ``qkv.bias`` (its exact gradient is zero), so it is left out; elsewhere a
    few such elements occur on some CPUs (which elements depends on the machine's summation
    order), so each tensor may hold at most 1% (and at least one) elements beyond 2e-6.
    A real difference between the runs (a wrong batch, route or gradient scale) moves nearly
    every element of a trained tensor by about the learning rate, and fails.
    """
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            x, y = (torch.cat([t[: len(t) // 3], t[2 * len(t) // 3 :]]) for t in (x, y))
        assert x.shape == y.shape and x.dtype == y.dtype, k
        diff = (x.double() - y.double()).abs()
        off, allowed = int((diff > 2e-6).sum()), max(1, x.numel() // 100)
        assert off <= allowed, (f"{k}: {off} of {x.numel()} elements differ by more than 2e-6 "
                                f"(at most {allowed} allowed; largest {diff.max().item():.3g})")


class SignalAt(Dataset):
    """Wraps a dataset; sends ``sig`` to this process on the ``at``-th item access."""

    def __init__(self, data: Dataset, at: int, sig: int = signal.SIGTERM) -> None:
        self.data, self.at, self.sig, self.calls = data, at, sig, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        return self.data[i]


DDP_SPEC = TrainSpec(epochs=1, max_steps=6, batch_size=16, lr=1e-3, warmup_steps=2, weight_decay=0.05, grad_clip=1.0)


def main(argv: list[str]) -> int:
    mode, out = argv[0], Path(argv[1])
    net = vit_snnet()
    data = prototype_data(96)
    if mode == "ddp":
        result = train(net, data, DDP_SPEC, device="cpu", checkpoint_dir=out / "ckpt", seed=3)
    elif mode == "sigterm":
        cfg = TrainSpec(epochs=2, batch_size=8, lr=1e-3)
        # 8 item accesses per step: the 20th falls in step 3 (0-based 2)
        result = train(net, SignalAt(data, 20), cfg, device="cpu", checkpoint_dir=out / "ckpt")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if is_main_process():
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "final.safetensors"))
        info = {"steps": result.steps, "stopped_early": result.stopped_early, "losses": result.losses,
                "checkpoint": str(result.checkpoint), "sigterm_handler_restored":
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL}
        (out / "result.json").write_text(json.dumps(info))
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
