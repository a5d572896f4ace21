"""The benchmark scripts run end to end on tiny sizes and print their documented last line.

They are not timed here (their ratios are measured by hand on a quiet machine, README "Tests and
benchmarks"); this only keeps them working as the library they call changes.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tiny_profile import ROOT, tiny_params

pytestmark = pytest.mark.cost(35)


def _bench(*args, cwd=ROOT, whole=False):
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    return lines if whole else lines[-1]


def test_kd_gain_reports_mean_and_std_over_seeds_and_resumes_from_its_record(tmp_path):
    params, record = tmp_path / "params.yaml", tmp_path / "runs.jsonl"
    params.write_text(yaml.safe_dump(tiny_params()))
    args = [str(ROOT / "bench/kd_gain.py"), "--params", str(params), "--seeds", "2", "--methods", "kd,rkd",
            "--record", str(record)]
    out = _bench(*args, whole=True)
    rows = {line.split(" | ")[0].strip("| "): line for line in out if line.startswith("| ")}
    assert {"kd", "rkd", "ce (baseline)"} <= set(rows), out
    assert re.search(r"\| 2 \| \d+\.\d\d ± \d+\.\d\d \| [+-]\d+\.\d\d ± \d+\.\d\d \| (yes|no) \| [a-z_, ]+ \|$",
                     rows["rkd"])
    assert re.fullmatch(r"baseline [\d.]+ ± [\d.]+ over 2 seeds \(teacher [\d.]+%\); below baseline - 1: "
                        r"(none|(kd|rkd)(,(kd|rkd))?)", out[-1]), out[-1]
    assert len(record.read_text().splitlines()) == 6  # ce, kd, rkd for each seed, written as each ended
    assert all(json.loads(line)["threads"] == 1 for line in record.read_text().splitlines())  # OMP_NUM_THREADS
    # A second call trains nothing (not even the teacher) and prints the same table from the record.
    again = _bench(*args, whole=True)
    assert sum("(recorded" in line for line in again) == 6 and "(trained" not in "".join(again), again
    assert [line for line in again if line.startswith("|")] == [line for line in out if line.startswith("|")]
    # --recorded-only trains nothing: the table of what the record holds, the rest named.
    partial = _bench(*args[:-4], "--methods", "kd,at", "--record", str(record), "--recorded-only", whole=True)
    assert "(trained" not in "".join(partial) and "seed 1: at not recorded yet" in partial, partial
    assert partial[-1].endswith("; not run yet: at") and any(line.startswith("| kd | 2 | ") for line in partial)
    record.write_text(record.read_text() + "not json\n")
    bad = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and f"{record} line 7 is not a run record" in bad.stderr, bad.stderr[-500:]
    assert len(record.read_text().splitlines()) == 7  # the record is left as it was


def test_methods_prints_the_slowest_method_and_each_methods_hours_per_run():
    # The teacher eager: compiling it would cost the test more than the rest (test_teacher_cache.py compiles).
    lines = _bench(str(ROOT / "bench/methods.py"), "--pair", "resnet20,resnet8", "--batch", "8", "--steps", "2",
                   "--methods", "kd,at", "--no-compile-teacher", whole=True)
    assert re.fullmatch(r"slowest (kd|at) \(resnet20->resnet8\) \d+\.\d\dx", lines[-1]), lines[-1]
    ce_ms = float(re.search(r"ce step (\d+\.\d) ms", "\n".join(lines))[1])
    (kd,) = [line.split() for line in lines if line.startswith("kd ")]
    ratio, hours = float(kd[1].rstrip("x")), float(kd[-1])
    steps = 240 * 6250  # the default --epochs of 50,000 images at batch 8
    assert hours == pytest.approx(ratio * ce_ms / 1000 * steps / 3600, rel=0.05), kd


def test_sigma_prints_speedup_and_map_difference():
    last = _bench(str(ROOT / "bench/sigma.py"), "--n", "2", "--noise-batch", "4", "--steps", "4",
                  "--probe-step", "3")
    match = re.fullmatch(r"speedup \d+\.\d\d max_abs_diff (\S+)", last)
    assert match and float(match[1]) < 1e-4, last  # batched and one-image maps are the same maps


def test_kmeans_prints_speedup_and_inertia_ratio():
    last = _bench(str(ROOT / "bench/kmeans.py"), "--teacher", "none", "--data", "none", "--arch", "resnet8",
                  "--k", "8", "--iterations", "3", "--max-points", "2000")
    match = re.fullmatch(r"speedup \d+\.\d\d inertia_ratio (\d+\.\d+)", last)
    assert match and 0.8 < float(match[1]) < 1.25, last  # both found a comparable clustering
