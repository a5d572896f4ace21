"""Is distillation helping? The KD gain over the CE baseline as mean ± std over seeds.

One run's gain is noise-dominated on small data (a ±several-point spread between seeds), so kdlens
judges a method only this way. Uses params.yaml (dataset, architectures, epochs, method params), trains
the teacher once (or loads ``--teacher``), then for each student seed trains the baseline (``ce``) and
the distilled student (``--method``) from the same initial weights.

    python bench/kd_gain.py --seeds 3 [--method kd] [--teacher data/teacher/model.pt]

Last line: ``gain <mean> ± <std> over <n> seeds (teacher <t>%, baseline <b>%, student <s>%)``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import prepare  # noqa: E402
from dataset.store import load_prepared  # noqa: E402
from core.device import device  # noqa: E402
from training.fitter import loaders  # noqa: E402
from training.jobs import train_network  # noqa: E402
from models.saved import load_model  # noqa: E402
from stages.params import load_params  # noqa: E402
from training.trainer import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--method", default=None, help="defaults to params.yaml's method")
    ap.add_argument("--teacher", default=None, help="a trained model.pt; trained here if omitted")
    args = ap.parse_args()
    p = load_params(args.params)
    method = args.method or p.method
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
        rows = []
        for seed in range(p.seed, p.seed + args.seeds):
            accs = {}
            for arm, m, t in (("baseline", "ce", None), ("student", method, teacher)):
                trained = train_network(p.student.arch, p.student.train, seed, m, p.method_params(m), data,
                                        tmp / f"{arm}-{seed}", teacher=t, name=f"{arm} seed {seed}",
                                        compile_teacher=p.trainer.compile_teacher)
                accs[arm] = trained.result.final["test/top1"]
            rows.append((seed, accs["baseline"], accs["student"]))
            print(f"seed {seed}: baseline {accs['baseline']:.2f}%  {method} {accs['student']:.2f}%  "
                  f"gain {accs['student'] - accs['baseline']:+.2f}", flush=True)
    gains = [s - b for _, b, s in rows]
    sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
    base = statistics.mean(b for _, b, _ in rows)
    stud = statistics.mean(s for _, _, s in rows)
    print(f"{p.data.name}: teacher {p.teacher.arch}, student {p.student.arch}, method {method}, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"gain {statistics.mean(gains):+.2f} ± {sd:.2f} over {len(gains)} seeds "
          f"(teacher {teacher_top1:.2f}%, baseline {base:.2f}%, student {stud:.2f}%)")


if __name__ == "__main__":
    main()
