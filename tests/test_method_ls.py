"""ls: the smoothed-target cross-entropy against numpy by hand, ε = 0 is CE, gradient, the method without a
teacher."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import methods
from method_helpers import assert_no_extra_parameters, assert_terms_send_gradient, make_method, make_pair, random_batch
from methods.ls import ls_loss


def test_ls_loss_matches_numpy():
    z = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [0.3, 0.1, 0.0, 2.0]])
    y = np.array([1, 3, 0])
    eps, k = 0.2, z.shape[1]
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    q = np.full_like(z, eps / k)
    q[np.arange(3), y] += 1 - eps  # (1 − ε)·onehot + ε/K
    expected = -(q * log_p).sum(1).mean()
    got = ls_loss(torch.tensor(z), torch.tensor(y), eps).item()
    assert abs(got - expected) < 1e-12
    # torch's label_smoothing follows the same convention
    assert abs(F.cross_entropy(torch.tensor(z), torch.tensor(y), label_smoothing=eps).item() - expected) < 1e-12


def test_epsilon_zero_is_cross_entropy():
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    assert torch.allclose(ls_loss(z, y, 0.0), F.cross_entropy(z, y), atol=1e-7)


def test_gradient_is_nonzero():
    torch.manual_seed(0)
    z, y = torch.randn(6, 5, requires_grad=True), torch.randint(0, 5, (6,))
    ls_loss(z, y, 0.1).backward()
    assert z.grad.abs().sum() > 0


def test_method_builds_without_a_teacher_and_returns_its_weighted_term():
    _, student = make_pair("resnet8", "resnet8")
    method = make_method("ls", student, None, ce_weight=0.5, epsilon=0.3)
    assert not method.uses_features
    assert_no_extra_parameters(method)
    out_s, _, y = random_batch(student, student)
    terms = method.losses(out_s, None, y, torch.arange(len(y)), epoch=1)
    assert set(terms) == {"ls"}
    assert torch.allclose(terms["ls"], 0.5 * ls_loss(out_s[0], y, 0.3))
    assert_terms_send_gradient(terms, student)


@pytest.mark.parametrize("epsilon", [-0.1, 1.0])
def test_epsilon_outside_zero_one_is_refused(epsilon):
    with pytest.raises(ValidationError):
        methods.params_class("ls")(epsilon=epsilon)
