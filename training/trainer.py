"""The training loop. It sums a dict of named loss terms and knows nothing about any method.

One step: student forward -> (frozen teacher forward) -> both again on each extra view of the batch the
method reads (``Method.extra_views``) -> ``method.losses(...)`` -> sum -> backward -> step (an optimiser
that runs its own backward passes over the named terms, DOT, takes them instead: core/optim.py).
Per epoch it records every term's mean value, the gradient norm each term alone sends into the student
(on the epoch's first batch: a term whose gradient is zero shows up at a glance), lr, accuracy and
throughput. Training state is checkpointed atomically every epoch into ``work_dir``; a run started again
with the same ``work_dir`` resumes from there instead of starting over. Under torchrun each rank trains
on its share of every batch and every recorded number is reduced over the ranks (core/distributed.py).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm


from core import checkpoint
from core.distributed import ONE, World, mean_over_ranks, replicate, world as current_world
from core.errors import KdlensError
from core.optim import backward_step
from dataset.loader import BatchLoader, epoch_generator
from methods.base import ViewOutputs
from training import optimizers
from training.params import TrainParams
from core.paths import LAST_FILE, PREVIOUS_FILE, kept_checkpoints, kept_name
from explain.weight_distance import WeightDistance

LINEAR_DECAY = 1 / 1.03093  # KDExplainer's "linear" schedule ends at ~3% of the base lr


def lr_at(cfg: TrainParams, epoch_progress: float) -> float:
    """Learning rate at a fractional epoch (0 = start of training): linear warm-up, then cosine or steps."""
    if cfg.warmup_epochs and epoch_progress < cfg.warmup_epochs:
        return cfg.lr * (epoch_progress + 1e-8) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        t = min(max(epoch_progress - cfg.warmup_epochs, 0.0) / span, 1.0)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "linear":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        t = min(max(epoch_progress - cfg.warmup_epochs, 0.0) / span, 1.0)
        return cfg.lr * (1.0 - t * LINEAR_DECAY)
    passed = sum(1 for m in cfg.milestones if epoch_progress >= m)
    return cfg.lr * cfg.gamma**passed


def _bar(batches, world: World, loader: BatchLoader, desc: str):
    """A progress bar over a loop on ``loader``'s batches, shown by rank 0 only; it counts the images of
    all ranks (and images/s), a partial last batch as a whole one."""
    return tqdm(batches, total=len(loader), desc=desc, leave=False, disable=None if world.main else True,
                unit="img", unit_scale=loader.batch_size)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: BatchLoader, desc: str = "eval", world: World = ONE
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits, labels) of this rank's share of every batch of ``loader``'s split, in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y, _ in _bar(loader.batches(0, world.rank, world.size), world, loader, desc):
        logits.append(model(x)[0].float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: torch.nn.Module, loader: BatchLoader, desc: str = "eval", world: World = ONE) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean cross-entropy on ``loader``'s split. Across ranks, each evaluates its
    share of every batch and the counts are added up: as fast as the training shares, and exact."""
    logits, y = predict(model, loader, desc, world)
    topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct1, correct5, loss_sum = world.sum([(topk[:, 0] == y).sum().item(), (topk == y[:, None]).any(1).sum().item(),
                                              F.cross_entropy(logits, y, reduction="sum").item()])
    n = loader.num_samples
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n}


def term_grad_norms(terms: dict[str, torch.Tensor], params: list[torch.nn.Parameter],
                    world: World = ONE) -> dict[str, float]:
    """L2 norm of the gradient each term alone sends into ``params`` (the student's weights); across
    ranks, of that gradient averaged over the ranks, as the optimiser gets it."""
    norms = {}
    for name, value in terms.items():
        if not value.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        grads = [g.detach().float() for g in grads if g is not None]
        if grads and world.size > 1:
            grads = [mean_over_ranks(torch.cat([g.flatten() for g in grads]))]
        norms[name] = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    return norms


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    kept: dict[int, Path] = field(default_factory=dict)  # epoch -> checkpoint path in work_dir
    resumed_from: int = 0
    phases: dict[str, list[dict]] = field(default_factory=dict)  # extra phase name -> its epoch records
    weight_distance: dict = field(default_factory=dict)  # explain.weight_distance.WeightDistance.as_dict()

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def param_groups(student: torch.nn.Module, method: torch.nn.Module, cfg: TrainParams) -> list[dict]:
    """Optimizer groups: each named group of the student (``named_param_groups()``; one by default) with
    its ``group_lr`` / ``frozen_epochs``, then the method's own parameters at the base rate."""
    named = student.named_param_groups()
    for key, table in (("group_lr", cfg.group_lr), ("frozen_epochs", cfg.frozen_epochs)):
        unknown = sorted(set(table) - set(named))
        if unknown:
            raise KdlensError(f"train.{key}: {type(student).__name__} has no parameter group {unknown[0]!r}; "
                             f"its groups are {sorted(named)}")
    groups = [{"params": [p for p in params if p.requires_grad], "name": name,
               "lr_scale": cfg.group_lr.get(name, cfg.lr) / cfg.lr, "frozen_epochs": cfg.frozen_epochs.get(name, 0)}
              for name, params in named.items()]
    groups.append({"params": [p for p in method.parameters() if p.requires_grad], "name": "method",
                   "lr_scale": 1.0, "frozen_epochs": 0})
    return [g for g in groups if g["params"]]


def _forward(student, teacher_fn, loss_fn, regularisers=None, task_terms: frozenset[str] = frozenset()) -> Callable:
    """One step's forward: (the student's logits, detached; the named loss terms; the names of those that
    train on the labels alone: the method's ``task_terms`` and the student's own regularisers). ``views``
    holds the batch's extra views (``Method.extra_views``): the student and the teacher run on each too,
    and the method gets their outputs as ``views``."""
    def teacher_on(x, idx, epoch, view=None):
        if teacher_fn is None:
            return None
        with torch.no_grad():
            return teacher_fn(x, idx, epoch, view)

    def forward(x, y, idx, epoch, views):
        s_out = student(x)
        t_out = teacher_on(x, idx, epoch)
        extra = {name: ViewOutputs(student(v), teacher_on(v, idx, epoch, name)) for name, v in views.items()}
        terms = loss_fn(s_out, t_out, y, idx, epoch, **({"views": extra} if extra else {}))
        task = task_terms
        if regularisers is not None:  # the student's own terms (e.g. VAM's gate entropy)
            own = regularisers()
            terms, task = {**terms, **own}, task.union(own)
        return s_out[0].detach(), terms, task
    return forward


@dataclass(frozen=True)
class Precision:
    """How a training step computes: autocast ``dtype`` (None: float32), and channels-last inputs."""

    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def scaled(self) -> bool:
        """fp16 needs a loss scaler (its narrow exponent underflows small gradients); bf16 does not."""
        return self.dtype == torch.float16

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.scaled)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


def precision(cfg: TrainParams, device: torch.device) -> Precision:
    """``cfg``'s precision on ``device``: all off on CPU; bf16 falls back to fp16 on a GPU without it."""
    if device.type != "cuda":
        return Precision()
    dtype = None
    if cfg.amp:
        dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" and torch.cuda.is_bf16_supported() else torch.float16
    return Precision(dtype, cfg.channels_last)


def _train_epoch(forward, optimizer, scaler, train: BatchLoader, epoch: int, lr_of_step, desc: str, grad_params: list,
                 prec: Precision, world: World, after_step=None, extra_views: tuple[str, ...] = ()) -> dict:
    """One pass over the training set (this rank's share of it): forward, sum the named terms, step.
    ``extra_views``: the views of each batch the forward gets besides the standard one. Returns the
    epoch's means over all ranks."""
    device = train.device
    steps = len(train)
    sums: dict[str, float] = {}
    grad_norms: dict[str, float] = {}
    correct = seen = 0
    t0 = time.perf_counter()
    batches = train.view_batches(epoch, world.rank, world.size, extra_views)
    for step, (x, y, idx, views) in enumerate(_bar(batches, world, train, desc)):
        lr = lr_of_step(step / steps)
        for group in optimizer.param_groups:
            frozen = epoch <= group.get("frozen_epochs", 0)
            group["lr"] = 0.0 if frozen else lr * group.get("lr_scale", 1.0)
        if prec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            views = {k: v.contiguous(memory_format=torch.channels_last) for k, v in views.items()}
        with prec.autocast(device):
            logits, terms, task = forward(x, y, idx, epoch, views)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise KdlensError(f"[{desc}] loss is {loss.item()} at step {step}; "
                              "lower the learning rate or the method's weights")
        if step == 0:
            grad_norms = term_grad_norms(terms, grad_params, world)
        backward_step(optimizer, terms, task, scaler)
        if after_step is not None:
            after_step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    seconds = time.perf_counter() - t0
    # Each rank's terms are means over its share of a batch, all shares the same size: the mean over
    # steps and ranks is the global one. Counts are added up.
    *totals, correct, seen = world.sum([*sums.values(), correct, seen])
    return {
        **{f"train/{k}": v / (steps * world.size) for k, v in zip(sums, totals)},
        **{f"gradnorm/{k}": v for k, v in grad_norms.items()},
        "train/top1": 100.0 * correct / max(seen, 1),
        "images_per_s": seen / max(seconds, 1e-9),
        "epoch_seconds": seconds,
    }


def _seed_epoch(seed: int, epoch: int, stream: int, rank: int) -> None:
    # Anything stochastic inside a step (dropout, a method's sampling) is seeded per epoch, so a resumed
    # run continues exactly as an uninterrupted one; per rank too, so that ranks draw independently
    # (rank 0 draws what one process does).
    torch.manual_seed(epoch_generator(seed, epoch, stream=stream).initial_seed() + rank)


def _run_phases(method, student, teacher_fn, train: BatchLoader, seed: int, name: str, prec: Precision,
                on_epoch, world: World) -> dict[str, list[dict]]:
    """The method's extra phases (e.g. FT's paraphraser pre-training), before the main training."""
    out = {}
    for n, phase in enumerate(method.phases()):
        # A phase trains its parameters even if they are frozen for the main training (FT's paraphraser).
        flags = [p.requires_grad for p in phase.parameters]
        for p in phase.parameters:
            p.requires_grad_(True)
        optimizer = optimizers.sgd(phase.parameters, phase.lr, phase.momentum, False, phase.weight_decay)
        scaler = prec.scaler()
        forward = replicate(_forward(student, teacher_fn, phase.losses), phase.parameters, world)
        student.eval()  # the student is not trained in a phase unless the phase lists its parameters
        records = []
        for epoch in range(1, phase.epochs + 1):
            _seed_epoch(seed, epoch, 100 + n, world.rank)
            for module in phase.train_modules:
                module.train()
            rec = _train_epoch(forward, optimizer, scaler, train, epoch, lambda _: phase.lr,
                               f"{name} {phase.name} {epoch}/{phase.epochs}", phase.parameters, prec, world)
            world.average_batchnorm(student, method)  # a phase may train BatchNorms (feat_mse's lower stages)
            rec = {f"phase/{phase.name}/{k}": v for k, v in rec.items()}
            records.append(rec)
            if world.main:
                print(f"[{name}] phase {phase.name} epoch {epoch}/{phase.epochs} "
                      f"loss {rec[f'phase/{phase.name}/train/loss']:.4f}", file=sys.stderr, flush=True)
                if on_epoch is not None:
                    on_epoch({"epoch": epoch, **rec})
        out[phase.name] = records
        for p, flag in zip(phase.parameters, flags):
            p.requires_grad_(flag)
    return out


RESUME_KEYS = ("student", "method", "optimizer", "epoch", "weight_distance")


def _resume_state(work_dir: Path, device: torch.device, name: str, main: bool) -> dict | None:
    """The newest readable resume state of ``work_dir`` (last.pt, else previous.pt), or None to start
    over; an unreadable one is reported in one line and passed over, never a reason to stop the stage."""
    for path in (work_dir / LAST_FILE, work_dir / PREVIOUS_FILE):
        if not path.exists():
            continue
        try:
            state = checkpoint.load(path, map_location=device, required=RESUME_KEYS)
        except checkpoint.UnreadableCheckpoint as e:
            if main:
                print(f"[{name}] warning: {e.problem}; passing over it", file=sys.stderr)
            continue
        if main:
            print(f"[{name}] resuming from {path} after epoch {state['epoch']}", file=sys.stderr)
        return state
    if main and (work_dir / LAST_FILE).exists():
        print(f"[{name}] no readable resume state in {work_dir}: training starts over", file=sys.stderr)
    return None


def fit(student: torch.nn.Module, method: torch.nn.Module, cfg: TrainParams, train: BatchLoader, test: BatchLoader, *,
        seed: int, work_dir: str | Path, teacher: torch.nn.Module | None = None, name: str = "train",
        on_epoch: Callable[[dict], None] | None = None,
        regularisers: Callable[[], dict[str, torch.Tensor]] | None = None,
        teacher_outputs: Callable | None = None) -> FitResult:
    """Train ``student`` (and the method's own parts) for ``cfg.epochs`` epochs; resume from ``work_dir``.

    ``on_epoch`` receives every epoch's record (extra phases' records carry ``phase/<name>/`` keys).
    ``regularisers()`` gives named terms the student itself adds to every step's loss (VAM's entropy).
    ``teacher_outputs(x, index, epoch, view)``, if given, replaces the teacher's forward in the main training
    (a cache of its outputs, training/teacher.py; ``view``: None for the standard view, else the name of
    one of the method's ``extra_views``); extra phases still run ``teacher``.
    Generic model hooks, used when the student has them: ``named_param_groups()`` (per-group lr and
    frozen epochs, ``cfg.group_lr`` / ``cfg.frozen_epochs``), ``start_epoch(epoch)`` before each epoch
    (LTB's routing temperature) and ``epoch_diagnostics()`` merged into each epoch's record, as the
    method's own ``epoch_diagnostics()`` is (CTKD's learnt temperature).
    The weight distance of every student layer (Cheng et al.'s learning-effort measure) is recorded over
    the main training, from the weights it starts with (after any extra phase) as epoch 0.
    Under torchrun (core/distributed.py) every rank calls ``fit`` alike and gets the same global
    records; rank 0 alone prints, writes checkpoints and calls ``on_epoch``.
    """
    world = current_world()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = train.device
    prec = precision(cfg, device)
    if prec.channels_last:
        student.to(memory_format=torch.channels_last)
        method.to(memory_format=torch.channels_last)
    student_params = [p for p in student.parameters() if p.requires_grad]
    optimizer = optimizers.build(param_groups(student, method, cfg), cfg, method)
    scaler = prec.scaler()
    live = None
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        live = lambda x, index, epoch, view=None: teacher(x)  # noqa: E731

    result = FitResult()
    start_epoch = 1
    last = work_dir / LAST_FILE
    state = _resume_state(work_dir, device, name, world.main)
    if state is not None:
        student.load_state_dict(state["student"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        result.history = json.loads(state["history"])
        start_epoch = state["epoch"] + 1
        result.resumed_from = state["epoch"]
    if world.broadcast(start_epoch) != start_epoch:
        raise KdlensError(f"{last}: rank {world.rank} does not see rank 0's checkpoint (resuming on several "
                          "nodes needs a work directory they share)")
    result.kept.update(kept_checkpoints(work_dir))
    if start_epoch == 1:
        result.phases = _run_phases(method, student, live, train, seed, name, prec, on_epoch, world)
    # Epoch 0 is the weights the main training starts from (after any extra phase), for the kept
    # checkpoint and the weight distance alike.
    if 0 in cfg.keep_epochs and 0 not in result.kept and world.main:
        result.kept[0] = _keep(work_dir, student, method, 0)
    distance = WeightDistance(student)
    if state is not None:
        distance.load_state_dict(state["weight_distance"])
    forward = replicate(_forward(student, teacher_outputs or live, method.losses, regularisers, method.task_terms),
                        [p for group in optimizer.param_groups for p in group["params"]], world)

    for epoch in range(start_epoch, cfg.epochs + 1):
        _seed_epoch(seed, epoch, 1, world.rank)
        student.start_epoch(epoch)
        student.train()
        method.train()
        rec = _train_epoch(forward, optimizer, scaler, train, epoch, lambda frac, e=epoch: lr_at(cfg, e - 1 + frac),
                           f"{name} {epoch}/{cfg.epochs}", student_params, prec, world,
                           after_step=distance.after_step, extra_views=getattr(method, "extra_views", ()))
        distance.end_epoch()
        world.average_batchnorm(student, method)
        ev = evaluate(student, test, desc=f"{name} test", world=world)
        record = {"epoch": epoch, "lr": lr_at(cfg, epoch - 1), **rec,
                  "test/top1": ev["top1"], "test/top5": ev["top5"], "test/loss": ev["loss"],
                  **student.epoch_diagnostics(), **method.epoch_diagnostics()}
        result.history.append(record)
        if not world.main:
            continue
        print(f"[{name}] epoch {epoch}/{cfg.epochs} loss {record['train/loss']:.4f} "
              f"train {record['train/top1']:.2f}% test {ev['top1']:.2f}% "
              f"({record['images_per_s']:.0f} img/s)", file=sys.stderr, flush=True)
        if epoch in cfg.keep_epochs:
            result.kept[epoch] = _keep(work_dir, student, method, epoch)
        if last.exists():  # the previous state stays readable while the new one is written
            os.replace(last, work_dir / PREVIOUS_FILE)
        checkpoint.save(last, {"student": student.state_dict(), "method": method.state_dict(),
                               "optimizer": optimizer.state_dict(), "epoch": epoch,
                               "history": json.dumps(result.history), "weight_distance": distance.state_dict()})
        if on_epoch is not None:
            on_epoch(record)
    result.weight_distance = distance.as_dict()
    return result


def _keep(work_dir: Path, student: torch.nn.Module, method: torch.nn.Module, epoch: int) -> Path:
    """A kept checkpoint: the student, and the method's state if its parts belong to the student at test
    time (letKD's KD layers), so every kept epoch can be analysed as it was evaluated."""
    path = work_dir / kept_name(epoch)
    extra = {"method": method.state_dict()} if getattr(method, "part_of_student", False) else {}
    checkpoint.save(path, {"model": student.state_dict(), "epoch": epoch, **extra})
    return path
