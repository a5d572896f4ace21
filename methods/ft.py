"""``ft``: Factor Transfer. Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via
Factor Transfer", NeurIPS 2018. Follows RepDistiller (inputs, beta) and KD-Zoo (loss form, k, paraphraser
schedule).

Two learnable parts, both working on the last pre-pooling map (``stages[-1]``; RepDistiller's feat[-2],
KD-Zoo's rb3):

* a **paraphraser** on the teacher map t (C_t channels): encoder conv3x3 C_t->C_t, C_t->C_f, C_f->C_f
  and a mirrored decoder of 3x3 transposed convs C_f->C_f, C_f->C_t, C_t->C_t, every layer followed by
  LeakyReLU(0.1), no BN (RepDistiller; KD-Zoo adds BN on CIFAR-10 only), with C_f = round(k * C_t),
  k = factor_rate = 0.5. It is **pre-trained as a Phase** ("paraphraser") for ``paraphraser_epochs``
  epochs at its own lr on the reconstruction loss MSE(decoder(encoder(t)), t), then frozen; the teacher
  factor is F_t = encoder(t).
* a **translator** on the student map s: three conv3x3 + BN + LeakyReLU(0.1), C_s->C_s, C_s->C_f,
  C_f->C_f, giving the student factor F_s. It is trained jointly with the student.

    FT(F_s, F_t) = mean_{b,i} | F_s[b]/||F_s[b]||_2 - F_t[b]/||F_t[b]||_2 |_i     (F[b] flattened; L1)
    L            = ce_weight * CE(z_s, y) + ft_weight * FT(F_s, F_t)

When the student and teacher maps differ in size, the larger factor is average-pooled to the smaller
one's H x W before flattening. ``factor="attention"`` switches to RepDistiller's variant: each
factor is first reduced to its channel mean of squares (an AT-like H x W map).

Defaults: ce_weight=1, ft_weight=200 (RepDistiller/KD-Zoo), factor_rate=0.5 (KD-Zoo), paraphraser_epochs=30
(RepDistiller/KD-Zoo; kdlens's small default profiles may override it), paraphraser_lr=0.01 (RepDistiller:
0.01 for ResNet/WRN students; KD-Zoo: the student lr x 0.1), with the Phase's SGD momentum 0.9 and weight
decay 5e-4. The L1 is a mean over the batch and the factor elements, as both reference codes do (the paper
writes the p=1 norm, a sum).

Freezing / which parameters the trainer optimises. The trainer puts every method parameter with
``requires_grad`` into the main SGD when ``fit`` starts, and runs ``phases()`` after that. This method
keeps the paraphraser at ``requires_grad=False`` except while its own phase's loss is being computed:
it is frozen at construction (so it is NOT in the main optimiser, only in the phase's, which lists it
explicitly), the phase's loss function switches it on, and the main ``losses`` switches it off again
and computes the teacher factor under ``no_grad`` (it is a teacher-side tensor). Its weights are in the
method's state dict, so a resumed run (which skips the phases) restores the pre-trained paraphraser.
``extra_parameter_count`` counts paraphraser and translator (plus the translator's BN buffers).

The teacher stays in eval mode throughout (as in the reference codes for the main phase). Every zoo pair
is served. Size caveat: kdlens's last map is the one the head pools (``stages[-1]``), which for
MobileNetV2 (1280 channels) and ShuffleV2 (1024) is wider than RepDistiller's feat[-2] (160 / 464), so a
student of those families gets a larger translator than in RepDistiller; and wide maps make the 3x3
convs big: extra parameters are 3.10M for resnet32x4 -> resnet8x4 (paraphraser 2.07M, translator 1.03M),
11.6M for resnet32x4 -> ShuffleV1, 26.6M for vgg13 -> MobileNetV2 and 168M for ResNet50 -> MobileNetV2
(the 2048-channel paraphraser alone is 132M, as it would be in RepDistiller).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from models.base import feature_shapes

from .base import Method, MethodParams, Phase, cross_entropy_term
from .common import align_spatial
from .registry import register

NEGATIVE_SLOPE = 0.1


def factor_vectors(factor: torch.Tensor, mode: Literal["flat", "attention"] = "flat") -> torch.Tensor:
    """[B, C, H, W] factor -> [B, D] L2-normalised vectors (flattened, or channel-mean-of-squares map)."""
    v = factor.pow(2).mean(dim=1) if mode == "attention" else factor
    return F.normalize(v.flatten(1), dim=1)


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor,
            mode: Literal["flat", "attention"] = "flat") -> torch.Tensor:
    """Mean absolute difference of the L2-normalised factors (pooled to a common H x W first)."""
    factor_s, factor_t = align_spatial(factor_s, factor_t)
    return (factor_vectors(factor_s, mode) - factor_vectors(factor_t, mode)).abs().mean()


def _block(cin: int, cout: int, transposed: bool = False, bn: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d(cin, cout, 3, padding=1) if transposed
            else nn.Conv2d(cin, cout, 3, padding=1, bias=not bn))
    return [conv] + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.LeakyReLU(NEGATIVE_SLOPE)]


class Paraphraser(nn.Module):
    """Auto-encoder of the teacher map: encoder C->C->C_f->C_f, decoder mirrored with transposed convs."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, f = channels, factor_channels
        self.encoder = nn.Sequential(*_block(c, c), *_block(c, f), *_block(f, f))
        self.decoder = nn.Sequential(*_block(f, f, True), *_block(f, c, True), *_block(c, c, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def translator(channels: int, factor_channels: int) -> nn.Sequential:
    """Student map -> factor: three conv3x3 + BN + LeakyReLU, C_s->C_s->C_f->C_f."""
    c, f = channels, factor_channels
    return nn.Sequential(*_block(c, c, bn=True), *_block(c, f, bn=True), *_block(f, f, bn=True))


class FTParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    ft_weight: float = Field(200.0, ge=0)
    factor_rate: float = Field(0.5, gt=0, le=1)  # k: factor channels = round(k * teacher channels)
    factor: Literal["flat", "attention"] = "flat"
    paraphraser_epochs: int = Field(30, ge=0)  # 0 = no pre-training (a random, frozen paraphraser)
    paraphraser_lr: float = Field(0.01, gt=0)


@register
class FT(Method):
    name = "ft"
    Params = FTParams

    def __init__(self, params: FTParams, ctx):
        super().__init__(params, ctx)
        c_s = feature_shapes(ctx.student, ctx.input_size)["stages"][-1][0]
        c_t = feature_shapes(ctx.teacher, ctx.input_size)["stages"][-1][0]
        c_f = max(1, round(params.factor_rate * c_t))
        self.paraphraser = Paraphraser(c_t, c_f)
        self.translator = translator(c_s, c_f)
        self._paraphraser_trainable(False)

    def _paraphraser_trainable(self, on: bool) -> None:
        for p in self.paraphraser.parameters():
            p.requires_grad_(on)

    def reconstruction_losses(self, student, teacher, targets, index, epoch):
        """The paraphraser phase's loss: MSE reconstruction of the teacher's last map."""
        self._paraphraser_trainable(True)
        t = teacher[1].stages[-1].detach()
        return {"reconstruction": F.mse_loss(self.paraphraser(t), t)}

    def phases(self) -> list[Phase]:
        p = self.params
        if p.paraphraser_epochs == 0:
            return []
        return [Phase(name="paraphraser", epochs=p.paraphraser_epochs, lr=p.paraphraser_lr,
                      parameters=list(self.paraphraser.parameters()), losses=self.reconstruction_losses,
                      train_modules=[self.paraphraser])]

    def factors(self, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        """(student factor from the translator, teacher factor from the frozen paraphraser's encoder)."""
        self._paraphraser_trainable(False)
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(teacher[1].stages[-1].detach())
        return self.translator(student[1].stages[-1]), factor_t

    def losses(self, student, teacher, targets, index, epoch):
        p = self.params
        factor_s, factor_t = self.factors(student, teacher)
        return {
            "ce": cross_entropy_term(student[0], targets, p.ce_weight),
            "ft": p.ft_weight * ft_loss(factor_s, factor_t, p.factor),
        }
