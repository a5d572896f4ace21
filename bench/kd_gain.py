"""Is distillation helping? Each method's top-1 and gain over the CE baseline as mean ± std over seeds.

One run's gain is noise-dominated on small data (a ±several-point spread between seeds), so kdlens
judges a method only this way. Uses params.yaml (dataset, architectures, epochs, method params), trains
the teacher once (or loads ``--teacher``), then for each student seed trains the baseline (``ce``) once
and every method's student from the same initial weights (the letKD methods' supervision is built once
from the teacher, as the build_supervision stage does).

    python bench/kd_gain.py --seeds 3 [--methods kd,rkd | --methods all,ls] [--teacher data/teacher/model.pt]
                            [--record bench/results/kd_gain.jsonl]

Prints one line per seed and method, then a markdown table (seeds, mean ± std of top-1 and of the gain
over the same seed's baseline, whether the mean is at least the baseline's mean - 1 point, and the
training-health flags of any seed). Last line:
``baseline <mean> ± <std> over <n> seeds (teacher <t>%); below baseline - 1: <methods or none>``.

``--record FILE`` makes a long benchmark resumable (all methods x 3 seeds is hours on a CPU): each run is
appended to FILE as one JSON line the moment it ends, keyed by a hash of everything that decides it (the
data, the student's architecture and schedule, the method's params, the seed and the teacher: the
file's SHA-256, or its params when trained here). A later call reuses every run whose key is in FILE
and trains only the rest, so changing one method's params re-runs that method alone. The key does not
cover the code: each line records the commit it ran at (``git describe``, ``-dirty`` if a tracked file
other than FILE differs) and its torch thread count (the float summation order, so the last digits of a
run, depend on it); start a new FILE after a change to the training code. ``--recorded-only`` trains
nothing and prints the table of what FILE holds so far (each method over the seeds it has).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import methods  # noqa: E402
from dataset import prepare  # noqa: E402
from dataset.store import load_prepared  # noqa: E402
from core.device import device  # noqa: E402
from core.files import sha256_file  # noqa: E402
from core.schema import params_hash  # noqa: E402
from training.fitter import loaders  # noqa: E402
from training.jobs import train_network  # noqa: E402
from models.saved import load_model  # noqa: E402
from stages.params import load_params  # noqa: E402
from methods.letkd.store import save_supervision  # noqa: E402
from methods.letkd.supervision import build_supervision  # noqa: E402
from training.health import health  # noqa: E402
from training.trainer import evaluate  # noqa: E402

MARGIN = 1.0  # points below the baseline's mean that a method's mean may fall before it is listed


def mean_sd(values: list[float], signed: bool = False) -> str:
    """``mean ± std``; one value alone, without a spread it does not have."""
    mean = f"{statistics.mean(values):{'+' if signed else ''}.2f}"
    return f"{mean} ± {statistics.stdev(values):.2f}" if len(values) > 1 else mean


class Record:
    """The runs of ``--record FILE``: one JSON object a line, looked up by ``key``; None = keep nothing."""

    def __init__(self, path: str | None):
        self.path, self.runs = (Path(path) if path else None), {}
        if self.path is None or not self.path.exists():
            return
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                run = json.loads(line)
                self.runs[run["key"]] = run
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                sys.exit(f"kd_gain: {self.path} line {n} is not a run record ({e}); "
                         "delete that line (its run is trained again) or pass another --record file")

    def add(self, run: dict) -> None:
        self.runs[run["key"]] = run
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(run) + "\n")


def commit(record: Path | None) -> str:
    """The code's commit (``git describe``), with ``-dirty`` when a tracked file other than the record
    itself differs from it (the record is written to while the benchmark runs)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, check=True).stdout.strip()

    try:
        inside = record is not None and record.resolve().is_relative_to(root)
        exclude = [f":(exclude){record.resolve().relative_to(root)}"] if inside else []
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", *exclude)
        return git("describe", "--always") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def method_list(arg: str | None, default: str) -> list[str]:
    """Comma-separated names; ``all`` stands for every registered method that needs a teacher (the
    baselines ce and ls are not KD: ``all,ls`` adds label smoothing)."""
    if not arg:
        return [default]
    names = [m for token in arg.split(",")
             for m in ([m for m in methods.names() if methods.get(m).needs_teacher] if token == "all" else [token])]
    return list(dict.fromkeys(n for n in names if n != "ce"))  # ce is always the baseline, trained first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=None, help="comma-separated, or all; defaults to params.yaml's method")
    ap.add_argument("--teacher", default=None, help="a trained model.pt; trained here if omitted")
    ap.add_argument("--record", default=None, help="a JSON-lines file of runs: reused, and appended to")
    ap.add_argument("--recorded-only", action="store_true",
                    help="train nothing: the table of the runs --record holds (a long benchmark's partial results)")
    args = ap.parse_args()
    if args.recorded_only and not args.record:
        sys.exit("kd_gain: --recorded-only reads the runs of --record FILE; pass it")
    p = load_params(args.params)
    chosen = method_list(args.methods, p.method)
    for m in chosen:
        methods.get(m)  # an unknown name fails here, in one line, before any training
    record = Record(args.record)
    teacher_id = {"file": sha256_file(args.teacher)} if args.teacher else \
        {"arch": p.teacher.arch, "seed": p.teacher.seed, "train": p.teacher.train.model_dump(mode="json")}
    setting = {"data": p.data.model_dump(mode="json"), "arch": p.student.arch,
               "train": p.student.train.model_dump(mode="json")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        prepare(p.data, tmp / "data")
        data = load_prepared(tmp / "data")
        teacher: list = []  # [network, top-1], made on first need: a fully recorded call trains nothing

        def the_teacher():
            if not teacher:
                if args.teacher:
                    net = load_model(args.teacher)
                    teacher.extend([net, evaluate(net, loaders(data, p.teacher.train, p.teacher.seed, device())[1])["top1"]])
                else:
                    trained = train_network(p.teacher.arch, p.teacher.train, p.teacher.seed, "ce",
                                            p.method_params("ce"), data, tmp / "teacher", name="teacher")
                    teacher.extend([trained.student, trained.result.final["test/top1"]])
            return teacher

        supervision: dict = {}  # the letKD methods' teacher-derived targets (stage build_supervision), built once

        def the_supervision(m: str):
            if not supervision:
                built = build_supervision(the_teacher()[0], data, p.supervision, device())
                save_supervision(tmp / "supervision", built.arrays, built.info)
                supervision["path"] = tmp / "supervision"
            return methods.get(m).load_supervision(supervision["path"])

        runs: dict[str, list[dict]] = {m: [] for m in ["ce", *chosen]}
        for seed in range(p.seed, p.seed + args.seeds):
            for m in runs:
                needs_teacher, needs_sup = methods.get(m).needs_teacher, methods.get(m).needs_supervision
                key = params_hash({**setting, "seed": seed, "method": m,
                                   "params": p.method_params(m).model_dump(mode="json"),
                                   "teacher": teacher_id if needs_teacher else None,
                                   **({"supervision": p.supervision.model_dump(mode="json")} if needs_sup else {})})
                run, source = record.runs.get(key), "recorded"
                if run is None and args.recorded_only:
                    print(f"seed {seed}: {m} not recorded yet", flush=True)
                    continue
                if run is None:
                    trained = train_network(p.student.arch, p.student.train, seed, m, p.method_params(m), data,
                                            tmp / f"{m}-{seed}", teacher=the_teacher()[0] if needs_teacher else None,
                                            name=f"{m} seed {seed}", compile_teacher=p.trainer.compile_teacher,
                                            supervision=the_supervision(m) if needs_sup else None)
                    flags = health(trained.result.history, data.num_classes, f"methods.{m}",
                                   p.method_params(m).ce_weight)
                    run, source = {"key": key, "method": m, "seed": seed,
                                   "top1": trained.result.final["test/top1"],
                                   "health": sorted({f["kind"] for f in flags}),
                                   "teacher_top1": the_teacher()[1] if needs_teacher else None,
                                   "threads": torch.get_num_threads(), "commit": commit(record.path),
                                   "date": time.strftime("%Y-%m-%d")}, "trained"
                    record.add(run)
                runs[m].append(run)
                base = next((r["top1"] for r in runs["ce"] if r["seed"] == seed), None)
                gain = "" if m == "ce" or base is None else f"  gain {run['top1'] - base:+.2f}"
                print(f"seed {seed}: {m} {run['top1']:.2f}%{gain}  ({source}, {run['commit']})", flush=True)
    t = next((r["teacher_top1"] for rs in runs.values() for r in rs if r["teacher_top1"] is not None), None)
    teacher_top1 = "not used" if t is None else f"{t:.2f}%"
    base = {r["seed"]: r["top1"] for r in runs.pop("ce")}
    if not base:
        sys.exit("kd_gain: no baseline (ce) run for any seed yet: nothing to compare with")
    floor = statistics.mean(base.values()) - MARGIN
    done = {m: rs for m, rs in runs.items() if rs}
    top1 = {m: [r["top1"] for r in rs] for m, rs in done.items()}
    print(f"{p.data.name}: teacher {p.teacher.arch} {teacher_top1}, student {p.student.arch}, "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| method | seeds | top-1 | gain over CE | mean ≥ baseline − 1 | health flags (any seed) |\n"
          "|---|---:|---:|---:|---|---|")
    print(f"| ce (baseline) | {len(base)} | {mean_sd(list(base.values()))} | | | |")
    below = [m for m, accs in top1.items() if statistics.mean(accs) < floor]
    for m, accs in sorted(top1.items(), key=lambda kv: -statistics.mean(kv[1])):
        flags = ", ".join(sorted({f for r in done[m] for f in r["health"]})) or "none"
        gains = [r["top1"] - base[r["seed"]] for r in done[m] if r["seed"] in base]
        print(f"| {m} | {len(accs)} | {mean_sd(accs)} | {mean_sd(gains, signed=True) if gains else ''} | "
              f"{'no' if m in below else 'yes'} | {flags} |")
    missing = [m for m, rs in runs.items() if not rs]
    print(f"\nbaseline {mean_sd(list(base.values()))} over {len(base)} seeds (teacher {teacher_top1}); "
          f"below baseline - 1: {','.join(below) or 'none'}" + (f"; not run yet: {','.join(missing)}" if missing else ""))

if __name__ == "__main__":
    main()
