"""Weight distance during training (Cheng et al., CVPR 2020), for every layer at once.

For each layer weight W (every conv and linear weight of the model; biases, BatchNorm and other
parameters excluded) the recorder keeps, per epoch e::

    d_e = sum over the optimiser steps t of epoch e of ||W^(t+1) - W^(t)||_F / ||W^(0)||_F

(the per-iteration path length, normalised by the norm of the weights at construction = epoch 0), its
cumulative sum ``WD(k) = d_0 + ... + d_k`` with ``d_0 = 0`` (the distance at the checkpoint taken after
k completed epochs: kdlens' ``epoch_{k:03d}.pt``), and the per-epoch form of the paper,
``||W_e - W_{e-1}||_F / ||W^(0)||_F`` (and its cumulative sum; by the triangle inequality the per-iteration
path is never shorter). kdlens' official form is the per-iteration one, as in the authors' code.

Differences from the upstream code: it records four fixed layers (conv, fc1, fc2, fc3 of its own
architectures) into a (4, E+1) array; kdlens records every conv/linear weight by module name, so the
analysed layer can be changed without retraining. Upstream's distilled student covers only its
feature-regression phase; in kdlens the recorder covers whatever training the caller wraps.

Cost: one copy of the weights plus, per optimiser step, one subtraction, one norm and one copy per
layer (multi-tensor ops); the accumulators stay on the device, so nothing synchronises before
:meth:`WeightDistance.end_epoch`.

Use::

    rec = WeightDistance(student)              # before the first optimiser step (epoch 0)
    ... optimizer.step(); rec.after_step()     # after EVERY optimiser step
    ... rec.end_epoch()                        # at the end of every epoch
    json.dumps(rec.as_dict())                  # cumulative per layer per epoch, epoch 0 = 0
    state["weight_distance"] = rec.state_dict()           # in the resume checkpoint
    rec.load_state_dict(state["weight_distance"])         # AFTER the model's weights are restored
"""
from __future__ import annotations

import math

import torch
from torch import nn

DEFINITION = ("d_e = sum over epoch e's optimiser steps of ||W(t+1) - W(t)||_F / ||W(0)||_F per conv/linear "
              "weight (biases excluded); cumulative[k] = d_0 + ... + d_k, d_0 = 0")


def layer_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{"<module>.weight": parameter}`` for every conv and linear module, in module order (shared
    weights once)."""
    out, seen = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module.weight is not None:
            if id(module.weight) in seen:
                continue
            seen.add(id(module.weight))
            out[f"{name}.weight" if name else "weight"] = module.weight
    return out


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    return [float(torch.linalg.vector_norm(t.detach().float())) for t in tensors]


class WeightDistance:
    """Per-layer weight path length during training; see the module docstring."""

    def __init__(self, model: nn.Module):
        self.weights = layer_weights(model)
        if not self.weights:
            raise ValueError(f"{type(model).__name__} has no conv or linear weights to track")
        self.names = list(self.weights)
        params = [self.weights[n] for n in self.names]
        self.w0_norm = _norms(params)
        self._snapshot()
        self.device = params[0].device
        self._acc = torch.zeros(len(params), dtype=torch.float64, device=self.device)
        self._steps = 0
        # per layer, index = epoch (0 = initial weights)
        self.per_iteration = {n: [0.0] for n in self.names}
        self.per_epoch = {n: [0.0] for n in self.names}
        self.steps_per_epoch = [0]

    def _params(self) -> list[torch.Tensor]:
        return [self.weights[n].detach() for n in self.names]

    def _snapshot(self) -> None:
        params = self._params()
        self._prev = [p.clone() for p in params]
        self._epoch_start = [p.clone() for p in params]

    @torch.no_grad()
    def after_step(self) -> None:
        """Call after every optimiser step: adds ||W(t+1) - W(t)||_F of every layer."""
        params = self._params()
        diffs = torch._foreach_sub(params, self._prev)
        norms = torch._foreach_norm(diffs)
        self._acc += torch.stack(norms).to(torch.float64)
        torch._foreach_copy_(self._prev, params)
        self._steps += 1

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Close the epoch: store d_e (normalised) and the per-epoch distance, reset the accumulator."""
        params = self._params()
        acc = self._acc.cpu().tolist()
        whole = _norms([p - s for p, s in zip(params, self._epoch_start)])
        for n, a, e, w0 in zip(self.names, acc, whole, self.w0_norm):
            self.per_iteration[n].append(a / w0 if w0 > 0 else math.nan)
            self.per_epoch[n].append(e / w0 if w0 > 0 else math.nan)
        self.steps_per_epoch.append(self._steps)
        self._acc.zero_()
        self._steps = 0
        torch._foreach_copy_(self._epoch_start, params)

    @property
    def epochs(self) -> int:
        """Completed epochs recorded."""
        return len(self.steps_per_epoch) - 1

    def cumulative(self, layer: str, form: str = "per_iteration") -> list[float]:
        """[WD(0) = 0, WD(1), ..., WD(E)] for one layer (``form``: per_iteration | per_epoch)."""
        series = self.per_iteration[layer] if form == "per_iteration" else self.per_epoch[layer]
        out, total = [], 0.0
        for d in series:
            total += d
            out.append(total)
        return out

    def as_dict(self) -> dict:
        """JSON-serialisable; NaN (a layer whose initial norm is 0) is written as None."""
        def clean(xs):
            return [None if (x is None or not math.isfinite(x)) else x for x in xs]

        return {
            "definition": DEFINITION,
            "official": "cumulative",
            "epochs": list(range(self.epochs + 1)),
            "steps_per_epoch": list(self.steps_per_epoch),
            "layers": {
                n: {
                    "w0_norm": self.w0_norm[i],
                    "per_iteration": clean(self.per_iteration[n]),
                    "cumulative": clean(self.cumulative(n)),
                    "per_epoch": clean(self.per_epoch[n]),
                    "cumulative_per_epoch": clean(self.cumulative(n, "per_epoch")),
                }
                for i, n in enumerate(self.names)
            },
        }

    def state_dict(self) -> dict:
        """Plain Python values (loads with ``torch.load(weights_only=True)``). Valid at an epoch boundary."""
        if self._steps:
            raise RuntimeError("WeightDistance.state_dict() mid-epoch: call end_epoch() first")
        return {
            "names": list(self.names),
            "w0_norm": list(self.w0_norm),
            "per_iteration": {n: list(v) for n, v in self.per_iteration.items()},
            "per_epoch": {n: list(v) for n, v in self.per_epoch.items()},
            "steps_per_epoch": list(self.steps_per_epoch),
            "current_norm": _norms(self._params()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the history; call it AFTER the model's weights were restored (checked)."""
        if list(state["names"]) != self.names:
            raise ValueError("WeightDistance state is for different layers: "
                             f"{state['names'][:3]}... vs {self.names[:3]}...")
        now = _norms(self._params())
        for n, a, b in zip(self.names, state["current_norm"], now):
            if not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8):
                raise ValueError(f"WeightDistance.load_state_dict: layer {n} has norm {b:.6g}, the state "
                                 f"expects {a:.6g}; restore the model's weights first")
        self.w0_norm = [float(v) for v in state["w0_norm"]]
        self.per_iteration = {n: [float(x) for x in state["per_iteration"][n]] for n in self.names}
        self.per_epoch = {n: [float(x) for x in state["per_epoch"][n]] for n in self.names}
        self.steps_per_epoch = [int(x) for x in state["steps_per_epoch"]]
        self._snapshot()
        self._acc.zero_()
        self._steps = 0
