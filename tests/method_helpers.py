"""Set-up and gradient checks shared by the per-method tests (tests/test_method_<name>.py).

Plain functions (the one-thread fixture is in conftest.py, for every test module).
What a test checks by hand (the numpy references, expected values, parameter-count formulas) stays in
the test itself; only the plumbing around it lives here.
"""
import math

import torch

import methods
import models


def make_pair(teacher: str, student: str, num_classes: int = 10, seed: int = 0):
    """Seed torch, then build ``teacher`` (in eval mode) and ``student`` from the zoo, in that order.

    Returns ``(teacher, student)``, the order of the arguments.
    """
    torch.manual_seed(seed)
    t = models.create(teacher, num_classes).eval()
    s = models.create(student, num_classes)
    return t, s


def make_method(name: str, student, teacher, n_train: int = 16, num_classes: int = 10, train_labels=None,
                **params):
    """``methods.create(name, <name's Params>(**params), ctx)`` with a MethodContext for 32x32 inputs.

    ``train_labels`` default to ``n_train`` random labels in [0, num_classes) (torch's global RNG); when
    given, ``num_train`` is their length.
    """
    if train_labels is None:
        train_labels = torch.randint(0, num_classes, (n_train,))
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=num_classes,
                                num_train=len(train_labels), input_size=32, train_labels=train_labels)
    return methods.create(name, methods.params_class(name)(**params), ctx)


def random_inputs(batch: int = 4, num_classes: int = 10, seed: int | None = None):
    """A random CIFAR-sized batch ``(x [B,3,32,32], y [B])``; from a fresh generator when ``seed`` is given,
    otherwise from torch's global RNG."""
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, num_classes, (batch,), generator=g)


def random_batch(student, teacher, batch: int = 4, num_classes: int = 10, seed: int | None = None):
    """``(student_output, teacher_output, y)`` on ``random_inputs``; the teacher runs under ``no_grad``."""
    x, y = random_inputs(batch, num_classes, seed)
    with torch.no_grad():
        out_t = teacher(x)
    return student(x), out_t, y


def grad_abs_sums(term: torch.Tensor, params) -> list[float]:
    """Sum of |d term / d p| for each of ``params`` (0.0 where ``term`` does not depend on ``p``); keeps the graph."""
    grads = torch.autograd.grad(term, list(params), retain_graph=True, allow_unused=True)
    return [0.0 if g is None else float(g.abs().sum()) for g in grads]


def assert_terms_send_gradient(terms: dict, student) -> None:
    """Every loss term is finite and sends a finite, non-zero gradient to the student's parameters."""
    params = list(student.parameters())
    for name, term in terms.items():
        assert torch.isfinite(term), name
        total = sum(grad_abs_sums(term, params))
        assert total > 0 and math.isfinite(total), name


def assert_each_gets_gradient(term: torch.Tensor, named_params) -> None:
    """Every one of ``named_params`` ((name, parameter) pairs) receives a non-zero gradient from ``term``."""
    named_params = list(named_params)
    sums = grad_abs_sums(term, [p for _, p in named_params])
    for (name, _), g in zip(named_params, sums):
        assert g > 0, name


def assert_no_extra_parameters(method) -> None:
    """The method adds nothing to the student: no parameters, no buffers."""
    assert method.extra_parameter_count() == 0 and not list(method.parameters())


def n_params(module) -> int:
    """Number of parameter elements of ``module`` (buffers not included)."""
    return sum(p.numel() for p in module.parameters())


def assert_step_updates_student(method, student, teacher, batch: int = 4, lr: float = 0.01,
                                train_method: bool = False, seed: int | None = None) -> None:
    """One SGD step on the summed loss: the loss is finite and some student weight moves.

    ``train_method`` adds the method's own parameters to the optimiser.
    """
    params = list(student.parameters()) + (list(method.parameters()) if train_method else [])
    opt = torch.optim.SGD(params, lr=lr)
    before = [p.detach().clone() for p in student.parameters()]
    out_s, out_t, y = random_batch(student, teacher, batch, seed=seed)
    loss = sum(method.losses(out_s, out_t, y, torch.arange(batch), epoch=1).values())
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
