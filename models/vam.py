"""Virtual Attention Module (VAM): a soft routing between "virtual blocks" of a stage's filters.

**kdlens's own design.** KDExplainer (Xue et al., IJCAI 2021) proposes VAM for ordinary CNN students but
its exact form (block partitioning, gate parametrisation, entropy weight, placement) was not retrieved and
no code exists. What the paper supports: the filters of a layer are
split "virtually" into blocks, a learnable attention over the blocks routes them, an entropy term pushes
the attention toward specialisation, and the cost is negligible. This implementation follows the LTB
routing of the authors' code (child input = Σ_parents gate · parent output), without its temperature schedule.

At a stage output x with C channels and G virtual blocks of C/G contiguous channels (x_i = block i),
with a learnable gate-logit matrix A ∈ R^{G×G} (row j = child block j, column i = parent block i):

    g_j  = softmax_i(A_j)                       (each row a distribution over parent blocks)
    y_j  = Σ_i g_{j,i} · x_i                    (no rescaling)
    L_H  = entropy_weight · mean_j H(g_j)       (nats; minimised: low entropy = specialised routing)

A = init_gain·I at start, so each block first attends mostly to itself (g_jj = e^a / (e^a + G − 1)) and the
network starts near the plain CNN (exactly at it as init_gain → ∞, and for G = 1). ``attach_vam`` wires
one module per chosen stage into the model's forward (a stage slot, models/base.py), so ``Features.stages[i]`` and
everything downstream see the gated map; the stage's ``preact`` map stays the ungated one. Cost: G²
parameters per attached stage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from core.schema import Section

from .base import feature_shapes


class VamParams(Section):
    """The ``vam`` section: the Virtual Attention Module on the distilled student (kdlens's own design, see
    the module docstring): gates over groups of the filters of the listed stages plus an entropy regulariser."""
    enabled: bool = False
    stages: list[int] = [-2]  # indices into Features.stages
    groups: int = Field(4, ge=1)
    init_gain: float = 3.0  # gate logits start at init_gain·I: each virtual block attends mostly to itself
    entropy_weight: float = Field(0.01, ge=0)


class VirtualAttention(nn.Module):
    """y_j = Σ_i softmax(A_j)_i · x_i over G virtual blocks of a [B, C, H, W] map (see the module docstring)."""

    def __init__(self, channels: int, groups: int, init_gain: float):
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f"{channels} channels do not split into groups={groups} virtual blocks "
                             "(groups must divide the channel count)")
        self.groups = groups
        self.logits = nn.Parameter(init_gain * torch.eye(groups))

    def gates(self) -> torch.Tensor:
        """[G, G] row-stochastic gate matrix g[j, i] (child j, parent i)."""
        return F.softmax(self.logits, dim=1)

    def entropy(self) -> torch.Tensor:
        """Mean row entropy of the gates in nats (differentiable; log G when uniform, 0 when one-hot)."""
        return -(self.gates() * F.log_softmax(self.logits, dim=1)).sum(dim=1).mean()

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        b, c, h, w = fmap.shape
        blocks = fmap.reshape(b, self.groups, c // self.groups, h, w)
        return torch.einsum("ji,bichw->bjchw", self.gates(), blocks).reshape(b, c, h, w)


def attach_vam(model: nn.Module, stages: list[int], groups: int, init_gain: float, entropy_weight: float,
               input_size: int = 32) -> nn.ModuleList:
    """Put a VirtualAttention on each of ``stages`` (indices into Features.stages) of a zoo model.

    The modules are the model's extension ``vam`` (``model.vam``: trained by the model's optimiser, saved in
    its state dict) and the arguments its config, so ``attach_vam(fresh, **model.extension_config("vam"))``
    rebuilds the same structure before ``load_state_dict``. Nothing is changed if any stage is refused.
    """
    if model.has_extension("vam"):
        raise ValueError(f"{type(model).__name__} already has a VAM attached")
    if not model.has_stage_slots:
        raise ValueError(f"VAM: {type(model).__name__} computes its stages inline (no stage to attach to)")
    shapes = feature_shapes(model, input_size)["stages"]
    n = len(shapes)
    if not stages:
        raise ValueError("VAM: no stage given")
    bad = [i for i in stages if not -n <= i < n]
    if bad:
        raise ValueError(f"VAM: stage(s) {bad} out of range for {type(model).__name__} ({n} stages)")
    if len({i % n for i in stages}) != len(stages):
        raise ValueError(f"VAM: stages {stages} name the same stage twice")

    modules = []
    for idx in stages:
        try:
            modules.append(VirtualAttention(shapes[idx][0], groups, init_gain))
        except ValueError as e:
            raise ValueError(f"VAM at stage {idx}: {e}") from None

    vams = nn.ModuleList(modules)
    undo = [model.add_stage_slot(idx, vam) for idx, vam in zip(stages, vams)]
    model.attach_extension("vam", vams, undo, {
        "stages": [int(i) for i in stages], "groups": int(groups), "init_gain": float(init_gain),
        "entropy_weight": float(entropy_weight), "input_size": int(input_size)})
    return vams


def vam_regulariser(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"vam_entropy": entropy_weight · mean entropy over the attached modules}, or {} without a VAM."""
    if not model.has_extension("vam"):
        return {}
    entropy = torch.stack([m.entropy() for m in model.vam]).mean()
    return {"vam_entropy": model.extension_config("vam")["entropy_weight"] * entropy}


def vam_parameter_count(model: nn.Module) -> int:
    """Parameters the VAM adds to the model (G² per attached stage; 0 without a VAM)."""
    return sum(p.numel() for p in model.vam.parameters()) if model.has_extension("vam") else 0
