"""Compare arms across experiments: the KDExplainer study (CE / LS / KD on an LTB student) and VAM's effect.

One ``dvc exp run`` trains one arm (its ``distill`` student, plus the CE baseline); the comparison of
arms is therefore across experiments, and MLflow is where all of them are: every training stage logs
its params, final accuracy, parameter counts and (for an LTB student) its stage-1 gate entropies and
``routing.json``. This reads those runs and writes one side-by-side table plus the two verdicts:

* KDExplainer's claim (Xue et al., IJCAI 2021): KD gives lower routing entropy than CE and than label smoothing, per
  LTB architecture, from the three arms' stage-1 routing at the reference temperature;
* VAM: each (architecture, method) trained with and without ``vam.enabled``: accuracy change and
  parameter cost.

    python -m explain.compare [--experiment kdlens-scenes] [--out reports/compare.md]

Only runs on the same prepared data as the newest one are compared, and per arm only the newest run.
One seed per arm: a verdict is a reading of these runs, not a significance test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.paths import REPORTS
from core.schema import params_hash
from core.tracking import StageRun, display_uri, probe_server, tracking_uri

STAGES = ("train_baseline", "distill")
LEVELS = ("level1", "level2", "level3")


@dataclass
class Arm:
    arch: str
    method: str
    vam: bool
    tree_from: str
    test_top1: float
    params: int
    vam_params: int
    run_id: str
    stage1_top1: float | None = None
    entropy: dict[str, float] = field(default_factory=dict)  # level -> mean gate entropy (stage 1)
    groups: list[list[str]] = field(default_factory=list)  # classes sharing a level-2 expert

    @property
    def key(self) -> tuple:
        return self.arch, self.method, self.vam, self.tree_from

    @property
    def label(self) -> str:
        return f"{self.arch} / {self.method}" + (" + VAM" if self.vam else "")

    @property
    def mean_entropy(self) -> float | None:
        return sum(self.entropy[lv] for lv in LEVELS) / len(LEVELS) if self.entropy else None


def arm_from_run(run, routing: dict | None) -> Arm:
    p, m = run.data.params, run.data.metrics
    method = p.get("method", "ce")  # train_baseline is the CE arm and logs no ``method`` param
    arm = Arm(arch=p["student.arch"], method=method, vam=p.get("vam.enabled", "False") == "True",
              tree_from=p.get("student.structure.tree_from", "own"), test_top1=m["final/test_top1"],
              params=int(m.get("params/student", 0)), vam_params=int(m.get("params/vam", 0)),
              run_id=run.info.run_id, stage1_top1=m.get("final/structure_test_top1"))
    if routing is not None:
        arm.entropy = {lv: routing["stage1"]["entropy"][lv] for lv in LEVELS}
        arm.groups = routing["stage1"]["groups"]["level2"]
    return arm


def newest_arms(runs: list, routing_of) -> list[Arm]:
    """The newest finished run per arm, among runs on the newest run's data (``runs`` newest first)."""
    if not runs:
        return []
    data = runs[0].data.params.get("input.data_sha256")
    arms: dict[tuple, Arm] = {}
    for run in runs:
        if run.data.params.get("input.data_sha256") != data or "final/test_top1" not in run.data.metrics:
            continue
        arm = arm_from_run(run, routing_of(run) if "final/structure_test_top1" in run.data.metrics else None)
        arms.setdefault(arm.key, arm)
    return sorted(arms.values(), key=lambda a: (a.arch, a.vam, a.method))


def ltb_verdicts(arms: list[Arm]) -> list[str]:
    """KDExplainer's claim per LTB architecture: KD's mean stage-1 gate entropy below CE's and LS's."""
    out = []
    by_arch: dict[str, dict[str, Arm]] = {}
    for a in arms:
        if a.entropy and not a.vam and a.tree_from == "own":
            by_arch.setdefault(a.arch, {})[a.method] = a
    for arch, arm in sorted(by_arch.items()):
        if "kd" not in arm:
            out.append(f"- `{arch}`: no KD arm yet (`dvc exp run -S student.arch={arch} -S method=kd`).")
            continue
        kd = arm["kd"].mean_entropy
        for other in ("ce", "ls"):
            if other not in arm:
                out.append(f"- `{arch}`: no {other.upper()} arm yet, so KD vs {other.upper()} is open.")
                continue
            o = arm[other].mean_entropy
            out.append(f"- `{arch}`: KD's mean gate entropy {kd:.3f} vs {other.upper()}'s {o:.3f} nats: "
                       f"lower with KD — **{'holds' if kd < o else 'does not hold'}** here.")
    return out


def vam_verdicts(arms: list[Arm]) -> list[str]:
    out = []
    plain = {(a.arch, a.method, a.tree_from): a for a in arms if not a.vam}
    for a in arms:
        b = plain.get((a.arch, a.method, a.tree_from)) if a.vam else None
        if b is not None:
            out.append(f"- `{a.arch}` / `{a.method}`: VAM {a.test_top1 - b.test_top1:+.2f} points "
                       f"({b.test_top1:.2f}% → {a.test_top1:.2f}%) for {a.vam_params:,} extra parameters "
                       f"({100 * a.vam_params / max(b.params, 1):.3f}% of the student).")
    return out


def markdown(arms: list[Arm], experiment: str) -> str:
    lines = [f"# kdlens: arms compared across experiments (`{experiment}`)", "",
             "| arm | test top-1 | stage-1 top-1 | gate entropy L1 / L2 / L3 (nats) | params | VAM params | "
             "classes sharing a level-2 expert | MLflow run |",
             "|---|---:|---:|---|---:|---:|---|---|"]
    for a in arms:
        ent = " / ".join(f"{a.entropy[lv]:.3f}" for lv in LEVELS) if a.entropy else "—"
        s1 = f"{a.stage1_top1:.2f}" if a.stage1_top1 is not None else "—"
        groups = "; ".join(", ".join(g) for g in a.groups if len(g) > 1) or "—"
        lines.append(f"| {a.label} | {a.test_top1:.2f} | {s1} | {ent} | {a.params:,} | {a.vam_params:,} | "
                     f"{groups} | `{a.run_id}` |")
    ltb, vam = ltb_verdicts(arms), vam_verdicts(arms)
    lines += ["", "## KDExplainer: does KD give lower routing entropy than CE and label smoothing?", "",
              *(ltb or ["- No LTB arms yet: `dvc exp run -S student.arch=ltb_w16 -S method=kd` (see README)."]),
              "", "## VAM: effect and cost next to the same run without it", "",
              *(vam or ["- No pair of runs with and without `vam.enabled` yet."]),
              "", "Gate entropy: stage-1 routing at the reference temperature (t = 1 on the preferences), mean "
              "over each level's nodes. One seed per arm.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import mlflow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="kdlens-scenes")
    ap.add_argument("--out", type=Path, default=REPORTS / "compare.md")
    args = ap.parse_args(argv)
    uri = tracking_uri()
    why = probe_server(uri)
    if why is not None:  # MLflow would retry an unreachable server for minutes
        print(f"error: MLflow tracking server {display_uri(uri)} is unreachable ({why})", file=sys.stderr)
        return 2
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(f"error: no MLflow experiment {args.experiment!r} at {display_uri(uri)}; run `dvc repro` first",
              file=sys.stderr)
        return 2
    runs = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                          order_by=["attributes.start_time DESC"], max_results=50000)
            if r.data.tags.get("kdlens.stage") in STAGES]  # MLflow cannot filter tags with IN

    def routing_of(run) -> dict | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(run.info.run_id, "routing.json", tmp)
            except Exception:  # an LTB run whose artifact upload failed: show it without groups
                return None
            return json.loads(Path(path).read_text())

    arms = newest_arms(runs, routing_of)
    text = markdown(arms, args.experiment)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    arm_runs = sorted(arm.run_id for arm in arms)
    with StageRun("compare", args.experiment.removeprefix("kdlens-"), {"arms": len(arms)},
                  params_hash({"runs": arm_runs})) as run:
        run.log_artifact(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
