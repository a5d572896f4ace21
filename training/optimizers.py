"""The optimisers ``train.optimizer`` names (``OPTIMIZERS``: sgd, adam, dot), and DOT itself.

``build`` gives the method's own optimiser where it has one (``methods.base.Method.own_optimizer``),
else the one ``train.optimizer`` names, for the trainer's parameter groups; the trainer steps either
through ``core.optim.backward_step`` and knows none of them by name.

**DOT**: Zhao, Cui, Song & Liang, "DOT: A Distillation-Oriented Trainer", ICCV 2023. KD's distillation
loss helps the student to flat minima, yet its task loss then converges less than without it; DOT
optimises the distillation loss harder: separate momentum buffers for the gradients of the task loss
(here the terms a method names in ``task_terms``, its label CE, plus the student's own regularisers such
as VAM's entropy) and of the distillation loss (every other term), the distillation one with the larger
momentum. Per parameter θ with both gradients, at learning rate η, momentum μ, weight decay λ::

    v_task ← (μ − Δ)·v_task + (g_task + λ·θ)
    v_kd   ← (μ + Δ)·v_kd   + g_kd
    θ      ← θ − η·(v_task + v_kd)

(weight decay once, on the task branch). A parameter that gets one kind of gradient only this step (a
connector of a feature method: distillation only) updates that buffer alone at momentum μ = ((μ − Δ) +
(μ + Δ)) / 2, weight decay on it. A buffer starts as its first step (as torch's SGD's), so with Δ = 0 DOT
is SGD, and a method without distillation terms (ce, ls; ab and fsp after their phase) trains with SGD.
The authors' Δ: 0.075 on CIFAR-100 and Tiny-ImageNet, 0.09 on ImageNet, with μ = 0.9. Published (the
authors' framework's tables), KD → KD+DOT: CIFAR-100 resnet32x4 → resnet8x4 73.33 → 75.12, vgg13 → vgg8
72.98 → 73.77, resnet32x4 → ShuffleV2 74.45 → 75.55; Tiny-ImageNet resnet18 → MobileNetV2 58.35 → 64.01,
resnet18 → ShuffleV2 62.26 → 65.75; ImageNet resnet34 → resnet18 71.03 → 71.72, resnet50 → MobileNetV1
70.50 → 73.09.

Where this differs from the authors' code (following the update above): their first step initialises a
distillation-only parameter's buffer without the weight decay it gets on every later step (here it has it
from the first step), and they support one parameter group only (here every group, with its own lr:
frozen groups, lr 0, still fill their buffers, as SGD's). Across training processes both gradients are
averaged over the ranks (``core.optim.TermsOptimizer``), as one process over the whole batch would have
them. With an fp16 loss scaler both backward passes are scaled by the same factor; the parameters'
``.grad`` holds their (scaled) sum, so the scaler's unscale and inf check cover both, and a step with a
non-finite gradient of either kind is skipped, its buffers untouched.
"""
from __future__ import annotations

from typing import Callable

import torch

from core.distributed import mean_over_ranks, world
from core.optim import TermsOptimizer

from .params import TrainParams


def sgd(params, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


Gradients = list[torch.Tensor | None]  # one per parameter, None where a loss does not reach it


def _mean_over_ranks(grads: Gradients) -> Gradients:
    """``grads`` averaged over the training processes, in one reduction (themselves in one process)."""
    present = [g for g in grads if g is not None]
    if world().size == 1 or not present:
        return grads
    flat = iter(mean_over_ranks(torch.cat([g.flatten() for g in present])).split([g.numel() for g in present]))
    return [None if g is None else next(flat).view_as(g) for g in grads]


class DOT(TermsOptimizer):
    """The Distillation-Oriented Trainer (module docstring). Its state per parameter: ``task_buffer`` and
    ``distillation_buffer`` (either absent until its first gradient), so a resumed run continues exactly."""

    def __init__(self, params, lr: float, momentum: float, delta: float, weight_decay: float):
        # 0 <= delta < momentum, momentum + delta < 1: checked where the params are (TrainParams).
        super().__init__(params, {"lr": lr, "momentum": momentum, "delta": delta, "weight_decay": weight_decay})
        self._pending: tuple[Gradients, Gradients, float] | None = None  # backward_step's, for step

    def backward_step(self, terms, task, scaler):
        params = [p for group in self.param_groups for p in group["params"]]
        distillation = [v for name, v in terms.items() if name not in task and v.requires_grad]
        own = [v for name, v in terms.items() if name in task and v.requires_grad]
        # Distillation first, keeping the graph for the task pass (the authors' order).
        kd_grads = _gradients(distillation, params, scaler, retain_graph=bool(own))
        task_grads = _gradients(own, params, scaler, retain_graph=False)
        both = _mean_over_ranks(task_grads + kd_grads)
        task_grads, kd_grads = both[:len(params)], both[len(params):]
        for p, g_task, g_kd in zip(params, task_grads, kd_grads):
            # Their sum as a new tensor: the scaler unscales .grad in place; step reads the two apart.
            present = [g for g in (g_task, g_kd) if g is not None]
            p.grad = sum(present) if present else None
        self._pending = (task_grads, kd_grads, 1.0 / scaler.get_scale())
        scaler.step(self)  # unscales .grad, and skips step() if any of it is not finite
        scaler.update()
        self._pending = None

    @torch.no_grad()
    def step(self, closure: None = None):
        if self._pending is None:
            raise RuntimeError("DOT updates through backward_step (it needs the task and distillation "
                               "gradients apart), not through step() after a backward pass")
        task_grads, kd_grads, unscale = self._pending
        grads = zip(task_grads, kd_grads)
        for group in self.param_groups:
            mu, delta, decay, lr = group["momentum"], group["delta"], group["weight_decay"], group["lr"]
            for p, (g_task, g_kd) in zip(group["params"], grads):
                if g_kd is None and g_task is None:
                    continue
                state = self.state[p]
                if g_kd is None:
                    moves = [_momentum(state, "task_buffer", g_task * unscale + decay * p, mu)]
                elif g_task is None:
                    moves = [_momentum(state, "distillation_buffer", g_kd * unscale + decay * p, mu)]
                else:
                    moves = [_momentum(state, "task_buffer", g_task * unscale + decay * p, mu - delta),
                             _momentum(state, "distillation_buffer", g_kd * unscale, mu + delta)]
                for v in moves:
                    p.add_(v, alpha=-lr)


def _gradients(losses: list[torch.Tensor], params: list[torch.Tensor], scaler: torch.amp.GradScaler,
               retain_graph: bool) -> Gradients:
    """The (scaled) gradient of the sum of ``losses`` for each of ``params``."""
    if not losses:
        return [None] * len(params)
    return list(torch.autograd.grad(scaler.scale(sum(losses)), params, retain_graph=retain_graph,
                                    allow_unused=True))


def _momentum(state: dict, key: str, step: torch.Tensor, mu: float) -> torch.Tensor:
    """The buffer ``state[key]`` after ``step``: v ← μ·v + step, or ``step`` itself at first."""
    buf = state.get(key)
    if buf is None:
        state[key] = buf = step
    else:
        buf.mul_(mu).add_(step)
    return buf


Builder = Callable[[list[dict], TrainParams], torch.optim.Optimizer]
OPTIMIZERS: dict[str, Builder] = {
    "sgd": lambda groups, cfg: sgd(groups, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay),
    # adam: KDExplainer's LTB stage 1 (coupled L2, as upstream)
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "dot": lambda groups, cfg: DOT(groups, lr=cfg.lr, momentum=cfg.momentum, delta=cfg.dot_delta,
                                   weight_decay=cfg.weight_decay),
}


def build(groups: list[dict], cfg: TrainParams, method) -> torch.optim.Optimizer:
    """The optimiser of the trainer's parameter ``groups``: the method's own if it has one, else
    ``cfg.optimizer``'s."""
    own = method.own_optimizer(groups, cfg)
    return own if own is not None else OPTIMIZERS[cfg.optimizer](groups, cfg)
