"""explain/calibration.py against values worked out by hand."""
import math

import pytest
import torch

from explain.calibration import expected_calibration_error, per_class_accuracy


def test_ece_and_per_class_accuracy_by_hand():
    # Confidences 0.9 (right), 0.9 (wrong), 0.7 (right); every prediction is class 0 of 3.
    logits = torch.tensor([[math.log(9), 0.0, -1e4], [math.log(9), 0.0, -1e4], [math.log(7 / 3), 0.0, -1e4]])
    labels = torch.tensor([0, 1, 0])
    # Bin (13/15, 14/15]: accuracy 1/2 at confidence 0.9; bin (10/15, 11/15]: 1 at 0.7.
    assert expected_calibration_error(logits, labels) == pytest.approx(100 * (2 / 3 * 0.4 + 1 / 3 * 0.3))
    assert per_class_accuracy(logits, labels, 3) == [100.0, 0.0, None]
