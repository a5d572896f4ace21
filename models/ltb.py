"""LTB, the "learn to branch" tree student of KDExplainer (Xue et al., "KDExplainer: A Task-oriented Attention Model
for Explaining Knowledge Distillation", IJCAI 2021), as the authors' code ("upstream") builds it.

A three-level hierarchical mixture of experts on 32x32 inputs. Each expert is a conv block
Conv3x3(bias) -> BN -> ReLU -> Conv3x3(bias) -> BN -> ReLU -> MaxPool2. Level 1 has 2 experts, both
reading the image. Level 2 has 4 experts and level 3 has 8. The last level routes into K per-class MLP
heads, one logit each (the ``ce`` / ``mc`` output mode upstream). Between levels, a routing matrix W (children x
parents) mixes the parents' outputs into each child's input: x_c = sum_p g[c, p] * y_p.

* Preferences: pi = softmax(W / preference_temperature) per row.
* Soft gate (stage 1): g = softmax(log pi / t), with t = t0 / epoch. No Gumbel noise, as upstream.
* Hard gate (stage 2, after ``freeze_structure()``): g = one_hot(argmax pi). This is the tree.

Mode and temperature are buffers, so a saved state dict restores them. Only the CIFAR path is built:
there is no 7x7 stem, which upstream creates but never uses on CIFAR.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, Features
from .registry import register

CHILDREN = (4, 8)  # children of routing levels 1 and 2; level 3's children are the K classes
EXPERTS = (2, 4, 8)  # expert blocks at levels 1, 2, 3


def entropy_rows(p) -> np.ndarray:
    """Entropy (nats) of each row of a row-stochastic matrix, with 0 * log 0 = 0."""
    p = np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def level_entropy(prefs) -> dict[str, float]:
    """Per level, the mean row entropy ("level{l}") and each child node's entropy ("level{l}/node{c}").

    The values come from the preferences pi, i.e. the gate at the fixed reference temperature t = 1.
    The training temperature depends on the epoch, so runs could not be compared on it.
    """
    out: dict[str, float] = {}
    for level, p in enumerate(prefs, start=1):
        h = entropy_rows(p)
        out[f"level{level}"] = float(h.mean())
        out.update({f"level{level}/node{c}": float(v) for c, v in enumerate(h)})
    return out


class ExpertBlock(nn.Sequential):
    """One expert: two biased 3x3 conv + BN + ReLU, then a 2x2 max-pool (halves H and W)."""

    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )


class ClassHeads(nn.Module):
    """K independent MLPs in_features -> hidden -> hidden -> 1, one per class, stored stacked.

    Weights are [K, ...] tensors applied as batched matmuls, so the math is exactly that of K separate
    heads (nothing is shared across classes) without a Python loop over K.
    """

    def __init__(self, num_classes: int, in_features: int, hidden: int, dropout: float,
                 init_std: float | None = 0.01):
        super().__init__()
        self.init_std = init_std
        k = num_classes
        self.w1 = nn.Parameter(torch.empty(k, hidden, in_features))
        self.b1 = nn.Parameter(torch.empty(k, hidden))
        self.w2 = nn.Parameter(torch.empty(k, hidden, hidden))
        self.b2 = nn.Parameter(torch.empty(k, hidden))
        self.w3 = nn.Parameter(torch.empty(k, hidden))
        self.b3 = nn.Parameter(torch.empty(k))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Biases 0; weights N(0, init_std) as upstream (0.01), or, with ``init_std=None``, He-normal over each
        head's fan-in (std sqrt(2/fan_in) before a ReLU, sqrt(1/fan_in) for the output). Upstream's 0.01 makes
        the logits ~1e-4 at the start: the paper's 300 epochs get past that, a short CPU run does not."""
        for w, gain in ((self.w1, 2.0), (self.w2, 2.0), (self.w3, 1.0)):
            std = self.init_std if self.init_std is not None else (gain / w.shape[-1]) ** 0.5
            nn.init.normal_(w, 0.0, std)
        for b in (self.b1, self.b2, self.b3):
            nn.init.zeros_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, K, in_features] (head k reads row k) -> logits [B, K]."""
        h = self.dropout(F.relu(torch.einsum("bki,khi->bkh", x, self.w1) + self.b1))
        h = self.dropout(F.relu(torch.einsum("bki,khi->bkh", h, self.w2) + self.b2))
        return torch.einsum("bkh,kh->bk", h, self.w3) + self.b3


def _mix(gate: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """Children inputs x_c = sum_p gate[c, p] * y_p: gate [C, P], parents [B, P, ...] -> [B, C, ...]."""
    return torch.einsum("cp,bp...->bc...", gate, parents)


class LTB(Classifier):
    """The KDExplainer tree student.

    It has **no** ``classifier`` Linear: the logits come from K per-class MLP heads, not from a linear map
    of ``pooled``. So the CAM identity of ``models.base`` does not hold, and CAM-based and
    feature-matching methods refuse this student (``exposes_features = False``).

    Features: ``stem`` and ``stages[0]`` are the two level-1 outputs concatenated on channels
    (2w x 16 x 16). ``stages[1]`` is the four level-2 outputs (4w x 8 x 8). ``stages[2]`` is the K routed
    level-3 maps, one per class head (K*out_width x 4 x 4). Every expert ends in ReLU + max-pool, which
    has no separate pre-activation, so ``preact`` is the same list as ``stages``.
    """

    exposes_features = False
    learns_structure = True
    has_stage_slots = False  # its stages are mixtures computed inline

    def __init__(self, num_classes: int, width: int = 64, out_width: int = 32, hidden: int = 128,
                 head_pool: int = 7, dropout: float = 0.15, t0: float = 10.0,
                 preference_temperature: float = 0.5, head_init_std: float | None = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.head_pool = head_pool
        self.t0 = t0
        self.preference_temperature = preference_temperature
        self.level1 = nn.ModuleList(ExpertBlock(3, width, width) for _ in range(EXPERTS[0]))
        self.level2 = nn.ModuleList(ExpertBlock(width, width, width) for _ in range(EXPERTS[1]))
        self.level3 = nn.ModuleList(ExpertBlock(width, width, out_width) for _ in range(EXPERTS[2]))
        shapes = [(CHILDREN[0], EXPERTS[0]), (CHILDREN[1], EXPERTS[1]), (num_classes, EXPERTS[2])]
        self.routing = nn.ParameterList(nn.Parameter(torch.empty(c, p)) for c, p in shapes)
        self.heads = ClassHeads(num_classes, out_width * head_pool * head_pool, hidden, dropout, head_init_std)
        self.register_buffer("temperature", torch.tensor(float(t0)))
        self.register_buffer("hard", torch.tensor(False))
        self._init_blocks()
        for w in self.routing:
            nn.init.uniform_(w, 0.0, 1.0)

    def _init_blocks(self) -> None:
        """As upstream: Kaiming-normal (fan_out, relu) convs with zero bias, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- routing ------------------------------------------------------------------------------------

    def preferences(self) -> list[torch.Tensor]:
        """pi per level: [4, 2], [8, 4], [K, 8], rows on the simplex."""
        return [F.softmax(w / self.preference_temperature, dim=1) for w in self.routing]

    def gates(self) -> list[torch.Tensor]:
        """The gates ``forward`` uses now: one-hot argmax in hard mode, else pi sharpened by 1/t."""
        if bool(self.hard):
            return [F.one_hot(p.argmax(dim=1), p.shape[1]).to(p.dtype) for p in self.preferences()]
        return [F.softmax(F.log_softmax(w / self.preference_temperature, dim=1) / self.temperature, dim=1)
                for w in self.routing]

    def start_epoch(self, epoch: int) -> None:
        """Trainer hook: anneal the soft gate's temperature to t0 / epoch (epoch counts from 1)."""
        if epoch < 1:
            raise ValueError(f"epochs count from 1, got {epoch}")
        if not bool(self.hard):
            self.temperature.fill_(self.t0 / epoch)

    def named_param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainer hook: "routing" (the three matrices) gets its own lr / frozen epochs (as upstream's stage 1)."""
        routing = {id(w) for w in self.routing}
        return {"weights": [p for p in self.parameters() if id(p) not in routing], "routing": list(self.routing)}

    def stage_prefix(self, index: int) -> str:
        """Weight-name prefix of the experts producing ``Features.stages[index]`` (the knowledge report's
        analysed layer: the last conv under it, i.e. the level's last expert)."""
        return f"level{index % 3 + 1}."

    def head_prefix(self) -> str:
        """Its per-class MLP heads stand where a ``classifier`` would."""
        return "heads."

    def freeze_structure(self, like: "LTB | None" = None) -> None:
        """Stage 2: route along the argmax tree from now on and stop learning the routing matrices.
        ``like``: take that net's routing (tree) first, e.g. the CE arm's stage 1."""
        if like is not None:
            self.routing.load_state_dict(like.routing.state_dict())
        self.hard.fill_(True)
        for w in self.routing:
            w.requires_grad_(False)

    def reinitialise(self) -> None:
        """Stage 2: draw fresh Conv/BN/head weights and leave the routing matrices untouched.

        The BN running statistics are reset too. Upstream keeps the stage-1 values, but they describe
        the soft-routed stage-1 weights, not the fresh ones. kdlens resets them on purpose.
        """
        self._init_blocks()
        self.heads.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()

    def epoch_diagnostics(self) -> dict[str, float]:
        """Trainer hook: the gate entropy at the reference temperature t = 1, per level and per node."""
        with torch.no_grad():
            prefs = self.preferences()
        return {f"routing/entropy/{k}": v for k, v in level_entropy(prefs).items()}

    # --- forward ------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        g1, g2, g3 = self.gates()
        y1 = torch.stack([block(x) for block in self.level1], dim=1)  # [B, 2, w, 16, 16]
        x2 = _mix(g1, y1)
        y2 = torch.stack([block(x2[:, c]) for c, block in enumerate(self.level2)], dim=1)  # [B, 4, w, 8, 8]
        x3 = _mix(g2, y2)
        y3 = torch.stack([block(x3[:, c]) for c, block in enumerate(self.level3)], dim=1)  # [B, 8, o, 4, 4]
        routed = _mix(g3, y3)  # [B, K, o, 4, 4]
        b, k, c, h, w = routed.shape
        pooled_maps = F.adaptive_avg_pool2d(routed.reshape(b * k, c, h, w), self.head_pool)
        logits = self.heads(pooled_maps.reshape(b, k, -1))
        stages = [y1.flatten(1, 2), y2.flatten(1, 2), routed.flatten(1, 2)]
        return logits, Features(stem=stages[0], stages=stages, preact=list(stages),
                                pooled=stages[-1].mean(dim=(2, 3)))


register("ltb")(LTB)  # the paper's widths
# CPU-sized for the scenes data: quarter widths, and He-initialised heads so tens of epochs suffice.
register("ltb_w16")(partial(LTB, width=16, out_width=8, hidden=32, head_init_std=None))
