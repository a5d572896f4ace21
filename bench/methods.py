"""Training-step cost of every method, relative to plain cross-entropy on the same student and batch.

For each registered method: the median wall time of one full training step (student forward, frozen
teacher forward, the method's losses, backward, SGD step) divided by the same for ``ce``, the two
alternated step by step in this one run (a shared machine's load then hits both alike), and the
method's extra parameter count (connectors, embeddings, memory banks). The teacher
runs as the trainer runs it by default: BN-folded, eval mode, compiled (training/teacher.py;
``--no-compile-teacher`` = ``trainer.compile_teacher: false``). Two more columns:

* ``cache``: the same ratio when the teacher's logits come from the teacher-output cache (stage
  ``cache_teacher``; only for the methods that read nothing else: kd, dkd);
* ``reference``: the reference framework's own ratio for that method and pair, measured on this machine
  kind; where it gave a range for a group of methods the upper end is used.

    python bench/methods.py [--pair resnet56,resnet20 | --pair resnet32x4,resnet8x4 | --pair both]
                            [--batch 64] [--steps 12] [--epochs 240] [--methods kd,dkd,...] [--no-compile-teacher]

Goals checked on the last lines (per pair): every method at or below its reference ratio, NST ≤ 3×,
KD and DKD with the cache ≤ 1.1×. The very last line reads ``slowest <method> <ratio>x``.

It runs on CUDA when present (core/device.py), so on a GPU it also answers how long a published protocol
takes there: the header gives the CE step's median time, and the ``hours`` column each method's training
steps over ``--epochs`` (default 240, the CIFAR-100 protocols') of 50,000 images, without evaluation.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402
import models  # noqa: E402
from core.device import device  # noqa: E402
from training.jobs import reads_teacher_logits_only  # noqa: E402
from training.teacher import frozen_teacher  # noqa: E402

_SAME = ("kd", "at", "fitnet", "pkt", "sp", "rkd", "dkd")
REFERENCE = {  # step / CE step of the reference framework's distillers, measured on this machine kind
    ("resnet56", "resnet20"): {**dict.fromkeys(_SAME, 1.85), "vid": 2.0, "kdsvd": 2.2, "ofd": 2.35,
                               "reviewkd": 2.9, "nst": 4.0, "crd": 5.8},
    ("resnet32x4", "resnet8x4"): {**dict.fromkeys(_SAME, 2.53), "vid": 2.8, "kdsvd": 3.0, "ofd": 3.2,
                                  "crd": 3.8, "reviewkd": 6.3, "nst": 21.9},
}


def training_step(method_name: str, teacher, student_name: str, x, y, idx, num_train: int,
                  cached_logits: torch.Tensor | None = None):
    """(one-step function, the method's extra parameter count). With ``cached_logits`` the teacher's
    logits are read from that [num_train, K] table (as the cache serves them), not from ``teacher.fast``."""
    torch.manual_seed(0)
    student = models.create(student_name, 100).to(x.device).train()
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=100, num_train=num_train,
                                input_size=x.shape[-1], train_labels=torch.arange(num_train, device=x.device) % 100)
    method = methods.create(method_name, methods.params_class(method_name)(), ctx).to(x.device).train()
    params = [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    use_teacher = methods.get(method_name).needs_teacher
    x_extra = x.flip(3)  # an extra view of the batch (mlkd's strong one; its augmentation is not timed)

    def teacher_on(images):
        with torch.no_grad():
            if not use_teacher:
                return None
            if cached_logits is not None:
                return cached_logits[idx].float(), None
            return teacher.fast(images)

    def step() -> float:
        if x.is_cuda:  # CUDA runs asynchronously: time the work, not its launch
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        s_out, t_out = student(x), teacher_on(x)
        views = {v: methods.ViewOutputs(student(x_extra), teacher_on(x_extra)) for v in method.extra_views}
        loss = sum(method.losses(s_out, t_out, y, idx, epoch=1000, **({"views": views} if views else {})).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step, method.extra_parameter_count()


def ratio_to_ce(step, ce_step, steps: int) -> float:
    """Median step time over median CE step time, the two alternated step by step (after two warm-up
    steps each) so that a change in the machine's load hits both alike."""
    times, ce_times = [], []
    for i in range(steps + 2):
        t, c = step(), ce_step()
        if i >= 2:
            times.append(t)
            ce_times.append(c)
    return statistics.median(times) / statistics.median(ce_times)


def bench_pair(teacher_name: str, student_name: str, args) -> dict[str, float]:
    torch.manual_seed(0)
    dev = device()
    teacher = models.create(teacher_name, 100).to(dev).eval()
    # What the trainer runs (methods still see the original); compiled here, on its first call.
    teacher.fast = frozen_teacher(teacher, 32, args.compile_teacher)
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.arange(args.batch, device=dev) % 100
    num_train = 50_000
    idx = torch.randperm(num_train, device=dev)[:args.batch]
    with torch.no_grad():
        table = torch.zeros(num_train, 100, device=dev)
        table[idx] = teacher.fast(x)[0]
    ce_step, _ = training_step("ce", teacher, student_name, x, y, idx, num_train)
    ce_seconds = statistics.median([ce_step() for _ in range(args.steps + 2)][2:])
    run_steps = args.epochs * math.ceil(num_train / args.batch)
    ref = REFERENCE.get((teacher_name, student_name), {})
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{teacher_name} -> {student_name}, batch {args.batch}, {where}, teacher "
          f"{'compiled' if args.compile_teacher else 'eager'}; ce step {1000 * ce_seconds:.1f} ms, "
          f"hours = training steps of {args.epochs} epochs x {num_train:,} images")
    print(f"{'method':10s} {'step/ce':>8s} {'cache':>7s} {'reference':>9s} {'extra params':>13s} {'hours':>7s}")
    ratios, fails = {}, []
    for name in args.methods.split(","):
        try:
            step, extra = training_step(name, teacher, student_name, x, y, idx, num_train)
        except methods.MethodNotApplicable as e:
            print(f"{name:10s} {'n/a':>8s}  ({e})")
            continue
        ratios[name] = ratio_to_ce(step, ce_step, args.steps)
        cache = ""
        if reads_teacher_logits_only(name):
            cached, _ = training_step(name, teacher, student_name, x, y, idx, num_train, cached_logits=table)
            rc = ratio_to_ce(cached, ce_step, args.steps)
            cache = f"{rc:6.2f}x"
            if rc > 1.1:
                fails.append(f"{name} with the cache {rc:.2f}x > 1.1x")
        r = ref.get(name)
        if r is not None and ratios[name] > r:
            fails.append(f"{name} {ratios[name]:.2f}x > reference {r:.2f}x")
        if name == "nst" and ratios[name] > 3.0:
            fails.append(f"nst {ratios[name]:.2f}x > 3x")
        hours = ratios[name] * ce_seconds * run_steps / 3600
        print(f"{name:10s} {ratios[name]:7.2f}x {cache:>7s} {f'{r:.2f}x' if r else '—':>9s} {extra:13,d} "
              f"{hours:7.2f}", flush=True)
    print(f"goals {teacher_name} -> {student_name}: " + ("all met" if not fails else "NOT met: " + "; ".join(fails)))
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="both", help="teacher,student or 'both' (the two reference pairs)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=240, help="the schedule the hours column is for")
    ap.add_argument("--compile-teacher", action=argparse.BooleanOptionalAction, default=True,
                    help="the teacher's forward through torch.compile, as trainer.compile_teacher (default on)")
    ap.add_argument("--methods", default=",".join(m for m in methods.names() if not m.startswith("letkd")),
                    help="letkd1/letkd2 need build_supervision's output, so they are not in the default list")
    args = ap.parse_args()
    pairs = list(REFERENCE) if args.pair == "both" else [tuple(args.pair.split(","))]
    ratios = {}
    for t, s in pairs:
        ratios.update({f"{m} ({t}->{s})": r for m, r in bench_pair(t, s, args).items()})
    slowest = max(ratios, key=ratios.get)
    print(f"slowest {slowest} {ratios[slowest]:.2f}x")


if __name__ == "__main__":
    main()
