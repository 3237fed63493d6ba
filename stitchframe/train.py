"""Training an SN-Net: one sampled route per optimizer step.

:func:`train` owns the whole loop: its own data order (seeded, resumable,
sharded across DDP ranks), route sampling (:mod:`stitchframe.sampling`),
cross-entropy or in-place distillation from a teacher anchor, AdamW with
separate learning rates for anchors and stitching layers, warm-up plus
cosine or constant schedules, gradient accumulation and clipping, bf16
autocast on CUDA, atomic checkpoints (:mod:`stitchframe.checkpoint`) that
resume bit-exactly, and clean stops on SIGINT/SIGTERM or a non-finite loss.

Run it under ``torchrun --nproc_per_node N`` for DDP: every rank calls
:func:`train` with the same arguments; each loads a different slice of every
global batch, all train the same route, and only rank 0 prints and writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .anchors import to_device
from .checkpoint import clear_checkpoints, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from .distributed import DistInfo, barrier, setup_distributed
from .errors import CheckpointError, SpecError, TrainingError
from .objectives import output_logits, route_teachers, training_loss
from .optim import build_optimizer, frozen_modules, lr_factor
from .sampling import EpochOrder, SeededDataset, hash_ints, make_sampler
from .snnet import SNNet
from .spec import RESUME_ADJUSTABLE, RESUME_NEUTRAL, TrainSpec, unstructure_options

__all__ = ["TrainResult", "train", "total_steps", "RESUME_ADJUSTABLE"]



@attrs.define
class TrainResult:
    """What a :func:`train` run did.

    Attributes:
        steps: Optimizer steps done in total (including those before a resume).
        total_steps: Steps the schedule plans for.
        epochs: Epochs done (``steps / steps_per_epoch``; may be fractional).
        final_loss: Loss of the last step (``None`` when no step ran).
        losses: Loss of every step, averaged over micro-batches and ranks.
        routes: Route id trained at every step.
        stopped_early: ``None`` when the run finished, else why it stopped
            (``"SIGINT"``, ``"SIGTERM"``, ``"stop_after"``).
        checkpoint: The latest checkpoint folder (``None`` when none was written).
    """

    steps: int
    total_steps: int
    epochs: float
    final_loss: float | None
    losses: list[float]
    routes: list[int]
    stopped_early: str | None = None
    checkpoint: Path | None = None


# ---------------------------------------------------------------------------
# small public pieces
# ---------------------------------------------------------------------------
def total_steps(cfg: TrainSpec, steps_per_epoch: int) -> int:
    """Optimizer steps of a run: ``ceil(epochs * steps_per_epoch)``, capped by ``max_steps``."""
    steps = math.ceil(cfg.epochs * steps_per_epoch - 1e-9)
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if amp == "auto":
            return None
        raise SpecError("train.amp: 'bf16' but this GPU does not support bfloat16; use amp: off")
    return torch.bfloat16


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping) and "labels" in batch:
        return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
    raise TrainingError(
        f"A training batch is a {type(batch).__name__}; the dataset must yield (inputs, target) pairs "
        "(or the collate_fn dicts with a 'labels' entry)"
    )


def _spec_dict(cfg: TrainSpec) -> dict[str, Any]:
    skip = RESUME_NEUTRAL | RESUME_ADJUSTABLE
    return {k: v for k, v in unstructure_options(cfg).items() if k not in skip}


def _adjustable(cfg: TrainSpec) -> dict[str, Any]:
    return {k: v for k, v in unstructure_options(cfg).items() if k in RESUME_ADJUSTABLE}


def _train_hash(cfg: TrainSpec) -> str:
    return hashlib.sha256(json.dumps(_spec_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C (sent to the whole process group): the main process
    finishes its step, saves a checkpoint and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: A SIGINT this soon after the first stop signal is the same stop (under torchrun a Ctrl-C reaches each
#: rank twice: from the terminal and passed on by torchrun), not a second Ctrl-C.
_SAME_STOP_S = 1.0


class _StopSignals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and stops. A second SIGINT (a second
    later or more) raises at once."""

    def __init__(self) -> None:
        self.received: str | None = None  # the signal this process got
        self.agreed: str | None = None  # the signal any rank got (SIGTERM first), known after a step
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if self.received is not None and signum == signal.SIGINT:
            if now - self._first < _SAME_STOP_S:  # one Ctrl-C seen twice: from the terminal and from torchrun
                return
            raise KeyboardInterrupt
        if self.received is None:
            self._first = now
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------
class _Trainer:
    def __init__(self, snnet: SNNet, dataset: Dataset, cfg: TrainSpec, **kw: Any) -> None:
        self.snnet, self.cfg = snnet, cfg
        self.task_model: nn.Module | None = kw["model"]  # a task's model holding the SN-Net, or None
        self.task = kw["task"]
        if self.task_model is not None and self.task is None:
            raise TrainingError("train(): a task model needs its task (pass task=...) for the loss")
        self.seed = int(kw["seed"])
        self.dist: DistInfo = setup_distributed(kw["device"])
        self.device = self.dist.device(kw["device"])
        self.checkpoint_dir = Path(kw["checkpoint_dir"])
        self.console = kw["console"] if self.dist.is_main else None
        self.stop_after = kw["stop_after"]
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TrainingError(
                f"train() needs a map-style dataset with __len__ and __getitem__, got {type(dataset).__name__}"
            )
        self.dataset = SeededDataset(dataset)
        self.loader_kw = {"num_workers": kw["num_workers"], "collate_fn": kw["collate_fn"]}
        if kw["num_workers"] > 0:
            self.loader_kw["worker_init_fn"] = _ignore_sigint
        self.order = EpochOrder(
            len(dataset), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
            world_size=self.dist.world_size, rank=self.dist.rank, seed=self.seed,
        )
        self.sampler = make_sampler(cfg.sampling, list(snnet.routes), seed=self.seed, groups=cfg.flops_groups,
                                    anchor_share=cfg.anchor_share)
        self.teachers = (route_teachers(snnet, cfg) if self.task_model is None
                         else [None] * len(snnet.routes))  # a task computes its own loss
        self.total = total_steps(cfg, self.order.steps_per_epoch)
        self.amp = _amp_dtype(cfg.amp, self.device)
        self.losses: list[float] = []
        self.routes: list[int] = []
        self.step = 0
        self.checkpoint: Path | None = None
        self.fresh = False

    # -- setup / teardown ------------------------------------------------
    def _prepare_model(self) -> None:
        snnet = self.snnet
        whole = self.task_model if self.task_model is not None else snnet  # what is trained and checkpointed
        self.saved = {
            "modes": [(m, m.training) for m in whole.modules()],
            "selected": snnet.selected_id,
            "requires_grad": [(p, p.requires_grad) for p in whole.parameters()],
        }
        whole.to(self.device)
        self.frozen = frozen_modules(snnet, list(self.cfg.freeze))
        for m in self.frozen:
            m.requires_grad_(False)
        self.optimizer = build_optimizer(snnet, self.cfg, extra=self.task_model)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        own = any(g["name"].startswith("task/") for g in self.optimizer.param_groups)  # the task's layers train
        self.route_trainable = [
            own or any(p.requires_grad for m in snnet.route_modules(r) for p in m.parameters()) for r in snnet.routes
        ]
        self.whole = whole
        self._set_modes()
        self.model: nn.Module = whole
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(whole, device_ids=ids, find_unused_parameters=True)

    def _set_modes(self) -> None:
        """Train mode everywhere except the frozen parts (their BatchNorm statistics stay fixed)."""
        self.whole.train()
        for m in self.frozen:
            m.eval()

    def _restore_model(self) -> None:
        saved = getattr(self, "saved", None)
        if saved is None:
            return
        for p, flag in saved["requires_grad"]:
            p.requires_grad_(flag)
        for m, flag in saved["modes"]:
            m.training = flag
        self.snnet.select(saved["selected"])

    def _start(self, resume: bool) -> None:
        path = latest_checkpoint(self.checkpoint_dir) if resume else None
        if path is None:
            self.fresh = True  # old checkpoints are removed at the first save, not before
            if resume:
                self._say(f"No checkpoint in {self.checkpoint_dir}; starting from step 0")
            self._seed_rngs(0)
            return
        base_lrs = [g["base_lr"] for g in self.optimizer.param_groups]
        ck = load_checkpoint(path, model=self.whole, optimizer=self.optimizer)
        self._check_compatible(ck.state, path)
        self._adjust(ck.state, base_lrs)
        self.step = int(ck.state["step"])
        self.losses = [float(x) for x in ck.state["losses"]]
        self.routes = [int(x) for x in ck.state["routes"]]
        self.checkpoint = path
        if self.dist.is_main:
            restore_rng(ck.rng_tensors, ck.state["rng"])
        else:
            self._seed_rngs(self.step)
        self._say(f"Resuming from {path} (step {self.step} of {self.total})")

    def _seed_rngs(self, step: int) -> None:
        s = hash_ints(self.seed, self.dist.rank, step, 0x7EED)[0] >> 1
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)

    def _adjust(self, state: dict[str, Any], base_lrs: list[float]) -> None:
        """Apply the settings of RESUME_ADJUSTABLE that changed since the checkpoint, with a note."""
        for group, lr in zip(self.optimizer.param_groups, base_lrs):
            group["base_lr"] = lr  # the checkpoint's groups carry the rates of the run that wrote it
        old = state.get("adjustable") or {}
        changed = [f"train.{k}: {old[k]!r} -> {v!r}" for k, v in _adjustable(self.cfg).items() if k in old and old[k] != v]
        if changed:
            self._say(f"Resuming with changed settings ({'; '.join(changed)}); "
                      "the result will differ from an uninterrupted run")

    def _check_compatible(self, state: dict[str, Any], path: Path) -> None:
        if state.get("spec_hash") != _train_hash(self.cfg):
            old, new = state.get("train_spec", {}), _spec_dict(self.cfg)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CheckpointError(
                f"{str(path)!r} was written with a different train spec (changed: {', '.join(diff) or '?'}); "
                "restore those settings to resume, or start fresh without resume"
            )
        expected = {"seed": self.seed, "num_samples": len(self.dataset), "sampler": self.sampler.state()}
        for key, value in expected.items():
            if state.get(key) != value:
                raise CheckpointError(
                    f"{str(path)!r} was written with {key}={state.get(key)!r}, this run has {value!r}; "
                    "resume with the same seed, dataset and SN-Net, or start fresh without resume"
                )

    # -- running ------------------------------------------------------------
    def _loader(self, epoch: int, start: int) -> Iterator[Any]:
        batches = list(self.order.micro_batches(epoch, start))
        g = torch.Generator().manual_seed(hash_ints(self.seed, epoch, start, self.dist.rank)[0] >> 1)
        loader = DataLoader(
            self.dataset, batch_sampler=batches, generator=g, pin_memory=self.device.type == "cuda", **self.loader_kw
        )
        return iter(loader)

    @contextlib.contextmanager
    def _teacher_mode(self, name: str):
        teacher = self.snnet.anchors[name]
        modes = [(m, m.training) for m in teacher.modules()]
        teacher.eval()
        try:
            with torch.no_grad():
                yield teacher
        finally:
            for m, flag in modes:
                m.training = flag

    def _micro_loss(self, batch: Any, trainable: bool, route: int) -> torch.Tensor:
        inputs, target = _split_batch(batch)
        inputs = to_device(inputs, self.device)
        target = target.to(self.device, non_blocking=True)
        amp = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        with amp, (contextlib.nullcontext() if trainable else torch.no_grad()):
            if self.task_model is not None:
                return self.task.loss((self.model if trainable else self.task_model)(inputs), target, self.cfg)
            logits = output_logits((self.model if trainable else self.snnet)(inputs))
            teacher = None
            name = self.teachers[route]
            if name is not None:
                with self._teacher_mode(name) as t:
                    teacher = output_logits(t(inputs))
        return training_loss(logits, target, self.cfg, teacher)

    def _step(self, it: Iterator[Any], signals: _StopSignals) -> bool:
        """One optimizer step; returns True when a rank received a stop signal."""
        route = self.sampler.route_at(self.step)
        self.snnet.select(route)
        trainable = self.route_trainable[route]
        self.optimizer.zero_grad(set_to_none=True)
        acc = self.cfg.grad_accum
        total = torch.zeros((), device=self.device)
        for m in range(acc):
            sync = not self.dist.distributed or m == acc - 1
            with contextlib.nullcontext() if sync or not trainable else self.model.no_sync():
                loss = self._micro_loss(next(it), trainable, route)
                if trainable:
                    (loss / acc).backward()
            total += loss.detach() / acc
        flags = [float(signals.received == name) for name in ("SIGINT", "SIGTERM")]
        stats = torch.cat([total[None], torch.tensor(flags, device=self.device)])
        if self.dist.distributed:
            torch.distributed.all_reduce(stats)
            stats[0] /= self.dist.world_size
        if stats[2] > 0 or stats[1] > 0:  # every rank stops with the same reason, whichever ranks got the signal
            signals.agreed = "SIGTERM" if stats[2] > 0 else "SIGINT"
        value = float(stats[0])
        if not math.isfinite(value):
            self._fail(f"the loss is {value}", route)
        if trainable:
            factor = lr_factor(self.step, total=self.total, warmup=self.cfg.warmup_steps, scheduler=self.cfg.scheduler)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            if self.cfg.grad_clip is not None:
                norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
            else:  # a finite loss can still give non-finite gradients; never step them into the weights
                norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
            if not math.isfinite(norm):
                self._fail(f"the gradient norm is {norm}", route)
            self.optimizer.step()
        self.losses.append(value)
        self.routes.append(route)
        self.step += 1
        return signals.agreed is not None

    def _fail(self, what: str, route: int) -> None:
        epoch = self.step / self.order.steps_per_epoch
        last = str(self.checkpoint) if self.checkpoint else "none yet"
        raise TrainingError(
            f"Training stopped at step {self.step} (epoch {epoch:.2f}) on route {route} "
            f"{str(self.snnet.routes[route])!r}: {what}. The last good checkpoint is {last}. "
            "Try a lower train.lr / train.stitch_lr, set train.grad_clip, use train.amp: off, "
            "or check the data for NaNs; then resume"
        )

    def _save(self) -> None:
        if self.dist.is_main:
            if self.fresh:
                n = clear_checkpoints(self.checkpoint_dir)
                self._say(f"Removed {n} checkpoint(s) of an earlier run in {self.checkpoint_dir}" if n else "")
                self.fresh = False
            spe = self.order.steps_per_epoch
            state = {
                "epoch": self.step / spe,
                "epoch_index": self.step // spe,
                "position": self.step % spe,
                "steps_per_epoch": spe,
                "total_steps": self.total,
                "sampler": self.sampler.state(),
                "scheduler": {"kind": self.cfg.scheduler, "warmup_steps": self.cfg.warmup_steps, "total": self.total},
                "losses": self.losses,
                "routes": self.routes,
                "train_spec": _spec_dict(self.cfg),
                "adjustable": _adjustable(self.cfg),
                "spec_hash": _train_hash(self.cfg),
                "seed": self.seed,
                "num_samples": len(self.dataset),
                "world_size": self.dist.world_size,
            }
            save_checkpoint(
                self.checkpoint_dir, step=self.step, model=self.whole, optimizer=self.optimizer,
                state=state, keep=self.cfg.keep_checkpoints,
            )
        self.checkpoint = self.checkpoint_dir / f"step-{self.step:08d}"

    def _loop(self, signals: _StopSignals, progress: Callable[[], None]) -> str | None:
        spe = self.order.steps_per_epoch
        end = self.total if self.stop_after is None else min(self.total, self.stop_after)
        while self.step < end:
            epoch, pos = divmod(self.step, spe)
            it = self._loader(epoch, pos)
            for _ in range(pos, spe):
                stop = self._step(it, signals)
                progress()
                every = self.cfg.checkpoint_every
                if every and self.step % every == 0:
                    self._save()
                if stop:
                    return signals.agreed
                if self.step >= end:
                    break
            del it
        return "stop_after" if self.step < self.total else None

    def run(self, resume: bool) -> TrainResult:
        try:
            self._prepare_model()
            self._start(resume)
            with _StopSignals() as signals, _Progress(self) as progress:
                stopped = self._loop(signals, progress.update)
                if self.step > 0:
                    self._save()
            barrier()
            if stopped in ("SIGINT", "SIGTERM"):
                self._say(f"Stopped by {stopped} at step {self.step}; checkpoint {self.checkpoint}; resume to go on")
        finally:
            self.model = None  # drop the DDP wrapper and its hooks
            self._restore_model()
        return TrainResult(
            steps=self.step,
            total_steps=self.total,
            epochs=self.step / self.order.steps_per_epoch,
            final_loss=self.losses[-1] if self.losses else None,
            losses=list(self.losses),
            routes=list(self.routes),
            stopped_early=stopped,
            checkpoint=self.checkpoint,
        )

    def _say(self, text: str) -> None:
        if self.console is not None and text:
            self.console.print(text)


class _Progress:
    """A rich progress bar with loss, learning rate and throughput (rank 0 with a console only)."""

    def __init__(self, trainer: _Trainer) -> None:
        self.t = trainer
        self.bar = None
        self.last = (trainer.step, time.perf_counter())

    def __enter__(self) -> _Progress:
        if self.t.console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} img/s"),
                TimeRemainingColumn(), console=self.t.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(
                "train", total=self.t.total, completed=self.t.step, loss="-", lr="-", speed="-"
            )
        return self

    def update(self) -> None:
        if self.bar is None:
            return
        t = self.t
        fields = {}
        if t.step % t.cfg.log_every == 0 or t.step == t.total:
            start, then = self.last
            now = time.perf_counter()
            window = t.losses[start:]
            rate = (t.step - start) * t.cfg.batch_size / max(now - then, 1e-9)
            lr = t.optimizer.param_groups[0]["lr"]
            fields = {"loss": f"{sum(window) / max(1, len(window)):.4f}", "lr": f"{lr:.2e}", "speed": f"{rate:.0f}"}
            self.last = (t.step, now)
            if not t.console.is_terminal:  # logs and pipes get a line per log_every steps instead of a live bar
                t.console.print(
                    f"train step {t.step}/{t.total}  loss {fields['loss']}  lr {fields['lr']}  {fields['speed']} img/s"
                )
        self.bar.update(self.task, completed=t.step, **fields)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def train(
    snnet: SNNet,
    dataset: Dataset,
    cfg: TrainSpec,
    *,
    device: torch.device | str,
    checkpoint_dir: str | Path,
    resume: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    console: Any = None,
    stop_after: int | None = None,
    model: nn.Module | None = None,
    task: Any = None,
) -> TrainResult:
    """Train an SN-Net (already calibrated), sampling one route per optimizer step.

    Data order, route choice and augmentation seeds are functions of
    ``seed`` and the step, so a run that is stopped and resumed ends with
    bit-identical weights to one that never stopped (same device, deterministic
    kernels).  Under ``torchrun`` every rank calls this with the same
    arguments; each loads a different slice of every global batch.

    Distillation (``cfg.loss == "distill"``) is in-place: the teacher is the
    SN-Net's own teacher anchor, run in eval mode without gradients.

    Args:
        snnet: The SN-Net; trained in place and left in its original mode,
            selection and ``requires_grad`` flags.
        dataset: Map-style dataset of ``(inputs, target)``; inputs a tensor
            or a dict of tensors.
        cfg: The train spec.
        device: Where to train (``cuda`` means this rank's GPU under torchrun).
        checkpoint_dir: Where checkpoints go (created if missing).  A fresh
            run (``resume=False``) removes checkpoints already there.
        resume: Continue from the latest checkpoint in ``checkpoint_dir``
            (start from step 0 when there is none).
        seed: Seed of data order, route sampling and RNGs.
        num_workers: DataLoader worker processes.
        collate_fn: DataLoader collate function (default: torch's).
        console: A :class:`rich.console.Console` for progress, or ``None``.
        stop_after: Stop (with a checkpoint) once this many steps are done in
            total, without changing the schedule; resume later to go on.
        model: A task's model holding ``snnet`` (:meth:`stitchframe.Task.build_model`):
            it is what runs, trains (its own layers at ``cfg.stitch_lr``) and
            is checkpointed; ``None``: the SN-Net (classification).
        task: The :class:`stitchframe.Task` whose ``loss`` trains ``model``
            (needed with ``model``; distillation is for the SN-Net only).

    Returns:
        Steps, epochs, loss history and why the run stopped early, if it did.

    Raises:
        TrainingError: A non-finite loss or gradient (the last good checkpoint is kept).
        CheckpointError: ``resume`` found a corrupt or incompatible checkpoint.
        SpecError: The batch does not split over ``grad_accum`` and ranks, and the like.
    """
    trainer = _Trainer(
        snnet, dataset, cfg, device=device, checkpoint_dir=checkpoint_dir, seed=seed, num_workers=num_workers,
        collate_fn=collate_fn, console=console, stop_after=stop_after, model=model, task=task,
    )
    return trainer.run(resume)
