"""Per-class accuracy and calibration of a classifier's test predictions (``stages/evaluate.py --json``).

Expected calibration error (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, Eq. 3):
the predictions are binned by confidence (the top softmax probability) into ``bins`` equal-width bins,

    ECE = sum_b |B_b| / n * | acc(B_b) - conf(B_b) |,

in percent, as the accuracies are. 15 bins, as in that paper.
"""
from __future__ import annotations

import torch

ECE_BINS = 15


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 accuracy (%) of each class's test samples; None for a class with no test sample."""
    correct = (logits.argmax(1) == labels).float()
    total = torch.bincount(labels, minlength=num_classes).float()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    return [None if n == 0 else 100.0 * float(h) / float(n) for h, n in zip(hits, total)]


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    conf, pred = logits.float().softmax(1).max(1)
    correct = (pred == labels).float()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur (softmax).
    which = (conf * bins).ceil().long().clamp(1, bins) - 1
    n = torch.bincount(which, minlength=bins).float()
    gap = torch.bincount(which, weights=correct - conf, minlength=bins).abs()  # |sum(acc - conf)| per bin
    return 100.0 * float(gap.sum() / n.sum())
