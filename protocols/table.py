"""The protocols' results, mean ± std over seeds, next to the published numbers:

    python -m protocols.table        # reads `dvc exp show --json` in the project

One row per (pair, method) among the experiments ``python -m protocols`` named
``<pair>-<method>[-seed<k>]``: how many runs, the mean ± std of the best test top-1 over the epochs (what
the papers report) and of the last epoch's, and the pair's published KD and DKD top-1.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

from core.errors import KdlensError
from core.stage import run_stage

from . import PAIRS

STUDENT_METRICS = "metrics/student.json"


def experiments(shown) -> dict[str, dict]:
    """{experiment name: its student metrics} of every named revision in `dvc exp show --json` output,
    whatever its nesting (DVC nests experiments under their baseline commit)."""
    found: dict[str, dict] = {}
    if isinstance(shown, dict):
        data, name = shown.get("data"), shown.get("name")
        if isinstance(data, dict) and name:
            metrics = ((data.get("metrics") or {}).get(STUDENT_METRICS) or {}).get("data") or {}
            if "best_test_top1" in metrics:
                found[name] = metrics
        for value in shown.values():
            found.update(experiments(value))
    elif isinstance(shown, list):
        for value in shown:
            found.update(experiments(value))
    return found


def protocol_of(name: str) -> tuple[str, str] | None:
    """``<pair>-<method>[-seed<k>]`` -> (pair, method); None for an experiment not named by the runner."""
    stem, _, seed = name.rpartition("-seed")
    if not (stem and seed.isdigit()):
        stem = name
    pair, _, method = stem.rpartition("-")
    return (pair, method) if pair in {p.name for p in PAIRS} and method else None


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def markdown(found: dict[str, dict]) -> str:
    runs: dict[tuple[str, str], list[dict]] = {}
    for name, metrics in sorted(found.items()):
        key = protocol_of(name)
        if key is not None:
            runs.setdefault(key, []).append(metrics)
    published = {p.name: p for p in PAIRS}
    lines = ["| teacher-student | method | runs | best top-1 | last top-1 | published KD | published DKD |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (pair, method), ms in sorted(runs.items()):
        p = published[pair]
        lines.append(f"| {pair} | {method} | {len(ms)} | {mean_sd([m['best_test_top1'] for m in ms])} | "
                     f"{mean_sd([m['test_top1'] for m in ms])} | {p.published_kd:.2f} | {p.published_dkd:.2f} |")
    return "\n".join(lines)


def main() -> None:
    out = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise KdlensError(f"dvc exp show failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}); "
                          "run this in the project, with its venv active")
    found = experiments(json.loads(out.stdout))
    if not any(protocol_of(name) for name in found):
        sys.exit("protocols.table: no experiment named by `python -m protocols` has finished yet")
    print(markdown(found))


if __name__ == "__main__":
    run_stage(main)
