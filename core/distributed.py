"""Training across processes: torchrun, DistributedDataParallel and what every rank must agree on.

One process is the default and runs exactly as if this module did not exist. With ``trainer.nproc`` = N
> 1 (or ``KDLENS_NPROC``), a training stage re-executes itself as ``torchrun --standalone
--nproc_per_node=N -m stages.<name>`` (``relaunch``), so dvc.yaml keeps ``python -m stages.<name>`` and
DVC still sees one command, its exit code and its outputs. In each worker, ``process_group`` joins the
ranks (nccl on CUDA, one GPU per process; gloo on CPU), and the trainer:

* gives each rank a disjoint share of every global batch (dataset/loader.py): one step of N ranks sees
  exactly the samples, and views, of one step of one process with the same ``batch_size``;
* averages the gradients of the parameters it optimises with DDP (``replicate``), and the BatchNorm
  running statistics at the end of every epoch (``World.average_batchnorm``): with per-rank batch
  statistics (the default) each rank's running mean is an average over its own shards, and the mean
  over ranks is what one process would have; ``trainer.sync_bn`` normalises by the statistics of the
  whole global batch instead (SyncBatchNorm, CUDA only);
* adds up the epoch's loss sums, accuracy counts and evaluation counts over the ranks (``World.sum``),
  so every logged number is global;
* logs, prints, shows progress bars and writes checkpoints and outputs on rank 0 only; every rank loads
  the same ``last.pt`` to resume.
"""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .device import device
from .errors import KdlensError

NPROC_ENV = "KDLENS_NPROC"


# --- state that must see the global batch across training processes (gather_rows / mean_over_ranks) ---


def _ranks() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor's rows from every training process, concatenated in rank order (the tensors themselves
    in one process); no gradient. Under torchrun each rank sees a share of the batch (this module),
    so a method whose state follows the batch (CRD's memory banks) gathers it to stay the same on every
    rank. The tensors share their first dimension; shares may differ in size by one."""
    if _ranks() == 1:
        return tensors
    n = torch.tensor([len(tensors[0])], device=tensors[0].device)
    counts = [torch.empty_like(n) for _ in range(_ranks())]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    out = []
    for t in tensors:
        padded = t.detach().new_zeros((max(counts), *t.shape[1:]))
        padded[:len(t)] = t.detach()
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:c] for part, c in zip(parts, counts)]))
    return tuple(out)


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the training processes (``t`` itself in one process); no gradient."""
    if _ranks() == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / _ranks()


def is_worker() -> bool:
    """True inside a process that torchrun started (it sets LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def processes(nproc: int) -> int:
    """How many processes a training runs on: the worker's WORLD_SIZE under torchrun, else
    ``KDLENS_NPROC`` if set, else ``trainer.nproc``."""
    if is_worker():
        return int(os.environ["WORLD_SIZE"])
    raw = os.environ.get(NPROC_ENV, "").strip()
    if not raw:
        return nproc
    if not raw.isdigit() or int(raw) < 1:
        raise KdlensError(f"{NPROC_ENV}: must be a positive integer (it overrides trainer.nproc), got {raw!r}")
    return int(raw)


def check_split(size: int, batch_sizes: dict[str, int], sync_bn: bool) -> None:
    """Refuse, before any process starts, a training that ``size`` processes cannot share evenly."""
    if size == 1:
        return
    for key, batch in batch_sizes.items():
        if batch % size:
            raise KdlensError(f"trainer.nproc={size} must divide {key}={batch}: each process takes an equal share "
                              f"of every batch (set {key} to a multiple of {size}, or change trainer.nproc)")
    if sync_bn and device().type != "cuda":
        raise KdlensError("trainer.sync_bn: SyncBatchNorm runs on CUDA only (torch has no CPU version); "
                          "set it to false on CPU")


def relaunch(size: int) -> None:
    """With ``size`` > 1 outside torchrun, replace this process by torchrun running the same entry point
    (module or script, same arguments) on ``size`` local processes; its exit code becomes the stage's.
    Returns only when there is nothing to do: one process, or already a torchrun worker."""
    if size == 1 or is_worker():
        return
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    target = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={size}",
            *target, *sys.argv[1:]]
    print(f"[kdlens] training on {size} processes: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, argv)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; every collective is a no-op for one process."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, prints and writes files."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64, so counts stay exact)."""
        if self.size == 1:
            return list(values)
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=on)  # nccl reduces CUDA tensors, gloo CPU ones
        dist.all_reduce(t)
        return t.tolist()

    def average_batchnorm(self, *modules: nn.Module) -> None:
        """Average the BatchNorm running statistics of ``modules`` over the ranks, in place, so every rank
        evaluates and rank 0 saves the same network. The running mean is an exponential average, linear in
        the batch means, so its mean over ranks is what one process would have; the running variance
        misses the (small) spread of the shard means around the global batch mean."""
        if self.size == 1:
            return
        stats = [buf for m in modules for bn in m.modules() if isinstance(bn, nn.modules.batchnorm._BatchNorm)
                 for buf in (bn.running_mean, bn.running_var) if buf is not None]
        if not stats:
            return
        flat = mean_over_ranks(torch.cat([s.flatten() for s in stats]))
        for s, new in zip(stats, flat.split([s.numel() for s in stats])):
            s.copy_(new.view_as(s))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


ONE = World()


def world() -> World:
    """The current process's World: rank and size of the initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return ONE


@contextmanager
def process_group() -> Iterator[World]:
    """In a torchrun worker of a world of several: join the process group (nccl with this worker's GPU,
    cuda:LOCAL_RANK, or gloo on CPU) and leave it at the end, after every rank has finished (the others
    wait there while rank 0 writes the outputs). Elsewhere: one process, nothing to join."""
    if not is_worker() or int(os.environ["WORLD_SIZE"]) == 1:
        yield ONE
        return
    cuda = device().type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield world()
        dist.barrier()
    finally:
        dist.destroy_process_group()


class _Step(nn.Module):
    """The parameters DDP averages, registered on one module whose forward is a training step's closure
    (the closure runs the student, the teacher and the method's losses, which own those parameters)."""

    def __init__(self, forward: Callable, params: list[nn.Parameter]):
        super().__init__()
        self.params = nn.ParameterList(params)
        self.step = forward

    def forward(self, *args):
        return self.step(*args)


def replicate(forward: Callable, params: list[nn.Parameter], ranks: World) -> Callable:
    """``forward`` itself in one process; across ranks, ``forward`` run through DDP so that the gradients
    of ``params`` (the ones the optimiser steps) are averaged over the ranks in the backward pass (the
    first after each forward only: an optimiser that runs several, core.optim.TermsOptimizer, takes its
    gradients with ``torch.autograd.grad``, which DDP does not see, and averages them itself).

    Every step must give every one of ``params`` a gradient (every method and phase does: each uses all
    of its parameters in each step); otherwise DDP stops at the next step naming the ones without.
    DDP's check that a gradient has its bucket's memory layout also compares the strides of size-1
    dimensions, so 1x1 convolutions trigger it although their layout is the same: silenced."""
    if ranks.size == 1:
        return forward
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides", category=UserWarning)
    unique = list({id(p): p for p in params}.values())
    return nn.parallel.DistributedDataParallel(_Step(forward, unique))


def use_sync_batchnorm(*modules: nn.Module) -> None:
    """Across ranks, replace every BatchNorm inside ``modules`` (a network, a method: never a BatchNorm
    itself, so the swap is in place) by SyncBatchNorm; in one process, leave them as they are."""
    if world().size == 1:
        return
    for m in modules:
        nn.SyncBatchNorm.convert_sync_batchnorm(m)
