"""DOT, the distillation-oriented optimiser (training/optimizers.py), and the trainer's optimiser hooks: two
steps against the update by hand (numpy) for parameters with both gradients, the task's only and the
distillation's only; Δ = 0 is SGD; the fp16 loss scaler; DOT with kd and dkd through ``fit``, resumed
exactly; the student's regularisers on the task side; a method without distillation terms trains as with
SGD; a method's own optimiser; two processes against one; the params' one-line errors."""
import typing

import numpy as np
import pytest
import torch
from torch import nn

import methods
from tiny_profile import tiny_params
from core.distributed import replicate, world
from core.errors import KdlensError
from core.optim import backward_step
from stages.params import parse_params
from test_engine import Killed, TinyNet, _comparable, _loaders, kill_after_2
from training.optimizers import DOT, OPTIMIZERS
from training.params import TrainParams
from training.trainer import fit

MU, DELTA, DECAY = 0.9, 0.075, 5e-4
LRS = (0.1, 0.05)  # two parameter groups
A, B, S, C, D = (np.array(v) for v in ([0.5, -1.0, 2.0], [1.0, 3.0], [2.0, -1.0, 0.5], [1.0, 1.0, -2.0], [0.3, -0.7]))
INIT = {"shared": np.array([0.2, 0.4, -0.3]), "head": np.array([-1.0, 0.5]), "connector": np.array([0.1, 0.9])}


def _np_gradients(p: dict) -> tuple[dict, dict]:
    """(task, distillation) gradients of the losses of ``_terms``: task 0.5|shared - A|² + 0.5|head - B|²,
    distillation 0.5|S·shared - C|² + 0.5|connector - D|²."""
    return ({"shared": p["shared"] - A, "head": p["head"] - B},
            {"shared": S * (S * p["shared"] - C), "connector": p["connector"] - D})


def _terms(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    t = lambda v: torch.tensor(v)  # noqa: E731
    return {"ce": 0.5 * ((p["shared"] - t(A)) ** 2).sum() + 0.5 * ((p["head"] - t(B)) ** 2).sum(),
            "kd": 0.5 * ((t(S) * p["shared"] - t(C)) ** 2).sum() + 0.5 * ((p["connector"] - t(D)) ** 2).sum()}


def _dot(delta=DELTA):
    params = {k: nn.Parameter(torch.tensor(v)) for k, v in INIT.items()}
    groups = [{"params": [params["shared"], params["head"]], "lr": LRS[0]}, {"params": [params["connector"]], "lr": LRS[1]}]
    return params, DOT(groups, lr=LRS[0], momentum=MU, delta=delta, weight_decay=DECAY)


def _np_dot(steps: int) -> dict:
    """The paper's update by hand: both gradients -> v_task at μ−Δ (with weight decay) and v_kd at μ+Δ;
    one gradient -> its buffer alone at μ, with weight decay; each buffer starts as its first step."""
    p = {k: v.copy() for k, v in INIT.items()}
    lr = {"shared": LRS[0], "head": LRS[0], "connector": LRS[1]}
    buffers: dict = {}

    def momentum(key, step, mu):
        buffers[key] = step if key not in buffers else mu * buffers[key] + step
        return buffers[key]

    for _ in range(steps):
        task, kd = _np_gradients(p)
        moves = {"shared": momentum(("shared", "task"), task["shared"] + DECAY * p["shared"], MU - DELTA)
                 + momentum(("shared", "kd"), kd["shared"], MU + DELTA),
                 "head": momentum(("head", "task"), task["head"] + DECAY * p["head"], MU),
                 "connector": momentum(("connector", "kd"), kd["connector"] + DECAY * p["connector"], MU)}
        p = {k: p[k] - lr[k] * moves[k] for k in p}
    return p


def _off() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


def test_two_dot_steps_match_the_update_by_hand():
    params, opt = _dot()
    for _ in range(2):
        opt.backward_step(_terms(params), frozenset({"ce"}), _off())
    expected = _np_dot(2)
    for k, p in params.items():
        np.testing.assert_allclose(p.detach().numpy(), expected[k], rtol=1e-12, atol=1e-14, err_msg=k)
    state = opt.state_dict()["state"]  # parameters in group order: shared, head, connector
    assert set(state[0]) == {"task_buffer", "distillation_buffer"}
    assert set(state[1]) == {"task_buffer"} and set(state[2]) == {"distillation_buffer"}
    with pytest.raises(RuntimeError, match="DOT updates through backward_step"):
        opt.step()


def test_zero_delta_is_sgd_on_the_sum():
    params, opt = _dot(delta=0.0)
    ref = {k: nn.Parameter(torch.tensor(v)) for k, v in INIT.items()}
    sgd = torch.optim.SGD([{"params": [ref["shared"], ref["head"]], "lr": LRS[0]},
                           {"params": [ref["connector"]], "lr": LRS[1]}], lr=LRS[0], momentum=MU, weight_decay=DECAY)
    for _ in range(3):
        opt.backward_step(_terms(params), frozenset({"ce"}), _off())
        backward_step(sgd, _terms(ref), frozenset({"ce"}), _off())  # the trainer's step for a plain optimiser
    for k in params:
        torch.testing.assert_close(params[k], ref[k], rtol=1e-12, atol=1e-14)


def test_fp16_loss_scaling_unscales_both_gradients_and_skips_a_non_finite_step():
    params, opt = _dot()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for _ in range(2):
        opt.backward_step(_terms(params), frozenset({"ce"}), scaler)
    expected = _np_dot(2)
    for k, p in params.items():
        np.testing.assert_allclose(p.detach().numpy(), expected[k], rtol=1e-12, atol=1e-14, err_msg=k)
    before = {k: p.detach().clone() for k, p in params.items()}
    buffers = {k: v.clone() for k, v in opt.state[params["shared"]].items()}
    terms = _terms(params)
    terms["kd"] = terms["kd"] * float("inf")  # an overflowing distillation gradient only
    opt.backward_step(terms, frozenset({"ce"}), scaler)
    assert all(torch.equal(p, before[k]) for k, p in params.items())  # skipped: parameters and buffers as they were
    assert all(torch.equal(v, buffers[k]) for k, v in opt.state[params["shared"]].items())
    assert scaler.get_scale() == 2.0 ** 9  # and the scale backs off


def _distil(tmp_path, name: str, optimizer: str = "dot", epochs: int = 3, on_epoch=None, **method_params):
    """``fit`` of a TinyNet student with ``name`` from a fixed TinyNet teacher on the engine tests' loaders."""
    torch.manual_seed(0)
    teacher, student = TinyNet().eval(), TinyNet()
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=3, num_train=48, input_size=8)
    method = methods.create(name, methods.params_class(name)(**method_params), ctx)
    cfg = TrainParams(epochs=epochs, batch_size=16, lr=0.1, optimizer=optimizer)
    train, test = _loaders()
    result = fit(student, method, cfg, train, test, seed=0, work_dir=tmp_path, on_epoch=on_epoch,
                 teacher=teacher if method.needs_teacher else None)
    return student, result


@pytest.mark.parametrize("name, params", [("kd", {}), ("dkd", {"warmup": 1})])
def test_dot_trains_kd_and_dkd_through_fit_and_resumes_exactly(tmp_path, name, params):
    _, full = _distil(tmp_path / "full", name, **params)
    assert all(np.isfinite(r["train/loss"]) for r in full.history)
    state = torch.load(tmp_path / "full/last.pt", weights_only=True)["optimizer"]["state"]
    assert all(set(s) == {"task_buffer", "distillation_buffer"} for s in state.values())  # logits: both reach all

    with pytest.raises(Killed):
        _distil(tmp_path / "run", name, on_epoch=kill_after_2, **params)
    _, resumed = _distil(tmp_path / "run", name, **params)
    assert resumed.resumed_from == 2
    assert _comparable(resumed.history) == _comparable(full.history)


def test_the_students_regularisers_are_task_terms(tmp_path):
    """A weight only the student's regulariser reaches (as VAM's entropy reaches its gates) gets a task
    buffer, and the student's weights both: kd's own terms split as ever."""
    torch.manual_seed(0)
    teacher, student = TinyNet().eval(), TinyNet()
    student.extra = nn.Parameter(torch.ones(2))
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=3, num_train=48, input_size=8)
    method = methods.create("kd", methods.params_class("kd")(), ctx)
    train, test = _loaders()
    fit(student, method, TrainParams(epochs=1, batch_size=16, optimizer="dot"), train, test, seed=0,
        work_dir=tmp_path, teacher=teacher, regularisers=lambda: {"extra_l2": (student.extra ** 2).sum()})
    state = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]["state"]
    extra = [p is student.extra for p in student.parameters()].index(True)
    assert set(state[extra]) == {"task_buffer"}
    assert all(set(s) == {"task_buffer", "distillation_buffer"} for i, s in state.items() if i != extra)


@pytest.mark.parametrize("name", ["ce", "ls"])
def test_a_method_without_distillation_terms_trains_under_dot_as_under_sgd(tmp_path, name):
    dot, _ = _distil(tmp_path / "dot", name, epochs=2)
    sgd, _ = _distil(tmp_path / "sgd", name, optimizer="sgd", epochs=2)
    for (k, a), b in zip(dot.state_dict().items(), sgd.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


class _CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


class _OwnOptimizer(methods.Method):
    """A method that brings its own optimiser."""

    name = "_probe_own_optimizer"
    needs_teacher = False

    def own_optimizer(self, groups, settings):
        return _CountingSGD(groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)

    def losses(self, student, teacher, targets, index, epoch):
        return {"ce": nn.functional.cross_entropy(student[0], targets)}


def test_a_methods_own_optimizer_replaces_train_optimizer(tmp_path):
    _CountingSGD.steps = 0
    model = TinyNet()
    method = _OwnOptimizer(methods.MethodParams(), methods.MethodContext(model, None, 3, 48))
    train, test = _loaders()
    fit(model, method, TrainParams(epochs=1, batch_size=16, optimizer="dot"), train, test, seed=0, work_dir=tmp_path)
    assert _CountingSGD.steps == len(train)
    state = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(set(s) == {"momentum_buffer"} for s in state.values())


def _ranked_steps(rank: int, ranks: int, init: str, out: str) -> None:
    """Three DOT steps of a linear student on the global batches of 8 (this rank's share of each), through
    the trainer's DDP wrapper; the final weights saved."""
    torch.set_num_threads(1)
    if ranks > 1:
        torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=ranks)
    try:
        torch.manual_seed(0)
        net, teacher = nn.Linear(5, 3), torch.randn(8, 3)
        opt = DOT(net.parameters(), lr=0.1, momentum=MU, delta=DELTA, weight_decay=DECAY)

        def forward(x, y, t):
            z = net(x)
            kd = nn.functional.kl_div(z.log_softmax(1), t.softmax(1), reduction="batchmean")
            return {"ce": nn.functional.cross_entropy(z, y), "kd": kd}, frozenset({"ce"})

        step = replicate(forward, list(net.parameters()), world())
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
            share = slice(rank * 8 // ranks, (rank + 1) * 8 // ranks)
            terms, task = step(x[share], y[share], teacher[share])
            opt.backward_step(terms, task, _off())
        torch.save(net.state_dict(), f"{out}/{ranks}_{rank}.pt")
    finally:
        if ranks > 1:
            torch.distributed.destroy_process_group()


def test_two_processes_step_as_one_over_the_whole_batch(tmp_path):
    """Each rank's gradients are the mean over its share; DOT averages both kinds over the ranks (DDP
    averages one backward pass only): the same weights as one process on the whole batch. The ranks are
    forked: they inherit torch as imported here (spawned, each imports it again: 10-30 s on the shared
    two cores)."""
    _ranked_steps(0, 1, "", str(tmp_path))
    torch.multiprocessing.start_processes(_ranked_steps, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)),
                                          nprocs=2, start_method="fork")
    one, rank0, rank1 = (torch.load(tmp_path / f"{n}.pt") for n in ("1_0", "2_0", "2_1"))
    for k in one:
        assert torch.equal(rank0[k], rank1[k]), k
        torch.testing.assert_close(rank0[k], one[k], rtol=1e-5, atol=1e-6, msg=k)


def test_optimizer_choices_are_the_registry():
    assert set(typing.get_args(TrainParams.model_fields["optimizer"].annotation)) == set(OPTIMIZERS)


@pytest.mark.parametrize("train, expected", [
    ({"optimizer": "dot", "dot_delta": 0.9}, "student.train: dot_delta (0.9) must be < momentum (0.9)"),
    ({"optimizer": "dot", "momentum": 0.95, "dot_delta": 0.075},
     "student.train: momentum + dot_delta (0.95 + 0.075) must be < 1"),
    ({"optimizer": "dot", "nesterov": True}, "student.train: nesterov: DOT has no Nesterov form"),
    ({"optimizer": "rmsprop"}, "student.train.optimizer: Input should be 'sgd', 'adam' or 'dot'"),
    ({"dot_delta": -0.1}, "student.train.dot_delta: Input should be greater than or equal to 0"),
])
def test_bad_dot_params_give_one_line_naming_the_key(train, expected):
    raw = tiny_params()
    raw["student"]["train"].update(train)
    with pytest.raises(KdlensError) as e:
        parse_params(raw, every_method=False)
    assert "\n" not in str(e.value) and expected in str(e.value), str(e.value)


def test_dot_delta_is_free_under_other_optimizers():
    assert TrainParams(optimizer="sgd", momentum=0.0).dot_delta == 0.075  # only dot reads it
