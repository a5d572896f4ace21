"""Training-step cost of every method, relative to plain cross-entropy on the same student and batch.

For each registered method: the mean wall time of one full training step (student forward, frozen
teacher forward, the method's losses, backward, SGD step) divided by the same for ``ce``, measured in
this one run, and the method's extra parameter count (connectors, embeddings, memory banks).

    python bench/methods.py [--teacher resnet32x4 --student resnet8x4] [--batch 64] [--steps 10]

The last line reads ``slowest <method> <ratio>x``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402
import models  # noqa: E402


def step_time(method_name: str, teacher, student_name: str, x, y, idx, steps: int, num_train: int):
    torch.manual_seed(0)
    student = models.create(student_name, 100).train()
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=100, num_train=num_train,
                                input_size=x.shape[-1], train_labels=torch.arange(num_train) % 100)
    method = methods.create(method_name, methods.params_class(method_name)(), ctx).train()
    params = [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    use_teacher = methods.get(method_name).needs_teacher
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        s_out = student(x)
        with torch.no_grad():
            t_out = teacher(x) if use_teacher else None
        loss = sum(method.losses(s_out, t_out, y, idx, epoch=1000).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), method.extra_parameter_count()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--methods", default=",".join(methods.names()))
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher = models.create(args.teacher, 100).eval()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.arange(args.batch) % 100
    idx = torch.arange(args.batch)
    num_train = 50_000
    base, _ = step_time("ce", teacher, args.student, x, y, idx, args.steps, num_train)
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"ce step {1000 * base:.1f} ms")
    print(f"{'method':10s} {'step/ce':>8s} {'extra params':>13s}")
    ratios = {}
    for name in args.methods.split(","):
        try:
            t, extra = step_time(name, teacher, args.student, x, y, idx, args.steps, num_train)
        except methods.MethodNotApplicable as e:
            print(f"{name:10s} {'n/a':>8s}  ({e})")
            continue
        ratios[name] = t / base
        print(f"{name:10s} {ratios[name]:7.2f}x {extra:13,d}", flush=True)
    slowest = max(ratios, key=ratios.get)
    print(f"slowest {slowest} {ratios[slowest]:.2f}x")


if __name__ == "__main__":
    main()
