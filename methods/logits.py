"""The logit losses that several methods share, as pure functions on tensors.

``kd_loss``: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
Learning Workshop (Eq. 2, times T^2 as in Sec. 2). ``dkd_loss``: Zhao et al., "Decoupled Knowledge
Distillation", CVPR 2022 (Eq. 7: TCKD and NCKD). Methods ``kd``, ``dkd`` and ``exp_kd`` use them; a
shared module, so that each method's DVC dependency ``methods/<name>.py`` needs no other method's file.

``standardize`` and ``LogitParams.standardize``: Sun, Ren, Li, Wang & Cao, "Logit Standardization in
Knowledge Distillation", CVPR 2024 (Sec. 4, Algorithm 1). Each logit vector is z-scored before the
temperature softmax, Z(z) = (z - mean(z)) / std(z), so the student matches the teacher's logit
*relations* and not their range; the temperature then acts as a base temperature on unit-variance
logits. A switch on every logit method (the methods whose Params derive from ``LogitParams``), not a
copy of each; the label CE keeps the raw logits, as in the paper. std is the unbiased one (N - 1) with
1e-7 added, as the authors' code computes it. The paper's CIFAR-100 settings: base temperature 2, KD
weight 9 with CE 0.1 for KD (resnet32x4 -> resnet8x4: 73.33 -> 76.62% top-1, its Table 1/README).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import MethodParams


class LogitParams(MethodParams):
    """A method on logits: ``standardize`` z-scores both networks' logits before its distillation terms."""

    standardize: bool = Field(False)


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored: (z - mean) / (std + eps), std with N - 1 (Sun et al., CVPR 2024)."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp16 -> fp32 under autocast
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def distillation_logits(logits_s: torch.Tensor, logits_t: torch.Tensor,
                        params: LogitParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, detached teacher) logits as a method's distillation terms read them: z-scored if
    ``params.standardize``."""
    logits_t = logits_t.detach()
    if params.standardize:
        return standardize(logits_s), standardize(logits_t)
    return logits_s, logits_t

def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * batch-mean KL(p_t^T || p_s^T)."""
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    return kl * temperature**2


def _kl_rows(log_p_t: torch.Tensor, log_p_s: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p_t || p_s) from log-probabilities, with 0 * log 0 = 0."""
    p_t = log_p_t.exp()
    return torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t)).sum(dim=1)


def binary_and_nontarget_log_probs(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """log [p_g, 1-p_g] (B,2) and log p_hat over the non-target classes (B,N-1), at temperature T."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # fp16 -> fp32
    b, n = z.shape
    gt = F.one_hot(targets, n).bool()
    log_all = torch.logsumexp(z, dim=1)
    z_other = z[~gt].view(b, n - 1)
    log_other = torch.logsumexp(z_other, dim=1)
    log_binary = torch.stack([z[gt] - log_all, log_other - log_all], dim=1)
    log_hat = z_other - log_other[:, None]
    return log_binary, log_hat


def dkd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, targets: torch.Tensor,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 * batch-mean KL(teacher || student), unweighted and without warm-up."""
    if logits_s.shape[1] < 2:
        raise ValueError("DKD needs at least two classes")
    bin_s, hat_s = binary_and_nontarget_log_probs(logits_s, targets, temperature)
    bin_t, hat_t = binary_and_nontarget_log_probs(logits_t, targets, temperature)
    scale = temperature**2
    tckd = _kl_rows(bin_t, bin_s).mean() * scale
    nckd = _kl_rows(hat_t, hat_s).mean() * scale
    return tckd, nckd
