"""Is distillation helping? Each method's top-1 and gain over the CE baseline as mean ± std over seeds.

One run's gain is noise-dominated on small data (a ±several-point spread between seeds), so kdlens
judges a method only this way. Uses params.yaml (dataset, architectures, epochs, method params), trains
the teacher once (or loads ``--teacher``), then for each student seed trains the baseline (``ce``) once
and every method's student from the same initial weights.

    python bench/kd_gain.py --seeds 3 [--methods kd,rkd | --methods all] [--teacher data/teacher/model.pt]

Prints one line per seed and method, then a markdown table (mean ± std of top-1 and of the gain, and
whether the mean is at least the baseline's mean - 1 point). Last line:
``baseline <mean> ± <std> over <n> seeds (teacher <t>%); below baseline - 1: <methods or none>``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402
from dataset import prepare  # noqa: E402
from dataset.store import load_prepared  # noqa: E402
from core.device import device  # noqa: E402
from training.fitter import loaders  # noqa: E402
from training.jobs import train_network  # noqa: E402
from models.saved import load_model  # noqa: E402
from stages.params import load_params  # noqa: E402
from training.trainer import evaluate  # noqa: E402

MARGIN = 1.0  # points below the baseline's mean that a method's mean may fall before it is listed


def mean_sd(values: list[float], signed: bool = False) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):{'+' if signed else ''}.2f} ± {sd:.2f}"


def method_list(arg: str | None, default: str) -> list[str]:
    """``all`` = every registered method that needs a teacher (the baselines ce and ls are not KD)."""
    if arg == "all":
        return [m for m in methods.names() if methods.get(m).needs_teacher]
    return arg.split(",") if arg else [default]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=None, help="comma-separated, or all; defaults to params.yaml's method")
    ap.add_argument("--teacher", default=None, help="a trained model.pt; trained here if omitted")
    args = ap.parse_args()
    p = load_params(args.params)
    chosen = method_list(args.methods, p.method)
    for m in chosen:
        methods.get(m)  # an unknown name fails here, in one line, before any training
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        prepare(p.data, tmp / "data")
        data = load_prepared(tmp / "data")
        if args.teacher:
            teacher = load_model(args.teacher)
            _, test = loaders(data, p.teacher.train, p.teacher.seed, device())
            teacher_top1 = evaluate(teacher, test)["top1"]
        else:
            trained = train_network(p.teacher.arch, p.teacher.train, p.teacher.seed, "ce", p.method_params("ce"),
                                    data, tmp / "teacher", name="teacher")
            teacher, teacher_top1 = trained.student, trained.result.final["test/top1"]
        top1: dict[str, list[float]] = {m: [] for m in ["ce", *chosen]}
        for seed in range(p.seed, p.seed + args.seeds):
            for m in top1:
                t = teacher if methods.get(m).needs_teacher else None
                trained = train_network(p.student.arch, p.student.train, seed, m, p.method_params(m), data,
                                        tmp / f"{m}-{seed}", teacher=t, name=f"{m} seed {seed}",
                                        compile_teacher=p.trainer.compile_teacher)
                top1[m].append(trained.result.final["test/top1"])
                gain = "" if m == "ce" else f"  gain {top1[m][-1] - top1['ce'][-1]:+.2f}"
                print(f"seed {seed}: {m} {top1[m][-1]:.2f}%{gain}", flush=True)
    base = top1.pop("ce")
    floor = statistics.mean(base) - MARGIN
    print(f"{p.data.name}: teacher {p.teacher.arch} {teacher_top1:.2f}%, student {p.student.arch}, "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| method | top-1 | gain over CE | mean ≥ baseline − 1 |\n|---|---:|---:|---|")
    print(f"| ce (baseline) | {mean_sd(base)} | | |")
    below = [m for m, accs in top1.items() if statistics.mean(accs) < floor]
    for m, accs in sorted(top1.items(), key=lambda kv: -statistics.mean(kv[1])):
        ok = m not in below
        print(f"| {m} | {mean_sd(accs)} | {mean_sd([s - b for s, b in zip(accs, base)], signed=True)} | {'yes' if ok else 'no'} |")
    print(f"\nbaseline {mean_sd(base)} over {len(base)} seeds (teacher {teacher_top1:.2f}%); "
          f"below baseline - 1: {','.join(below) or 'none'}")


if __name__ == "__main__":
    main()
