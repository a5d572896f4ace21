"""KDExplainer's study through the real pipeline (tiny profile, temporary git repo; helpers from
test_pipeline.py): the LTB student's CE arm (the baseline) and KD arm as one experiment, their routing
report and the cross-experiment comparison; then VAM on a resnet8 student. (The label-smoothing arm runs
in tests/test_ltb_training.py, the comparison's verdicts in tests/test_compare.py, to keep this short.)"""
import json

from test_pipeline import _run, _runs, repo  # noqa: F401  (repo: the module-scoped tiny project fixture)

LTB = ("-S", "student.arch=ltb_w16")


def _new_stages(repo, before):
    return sorted(r.data.tags["kdlens.stage"] for r in _runs(repo)[1] if r.info.run_id not in before)


def test_ltb_arms_their_routing_report_and_the_comparison(repo):
    _run(repo, "dvc", "exp", "run", *LTB, "-S", "method=kd", "-n", "ltb-kd")
    student = json.loads((repo / "metrics/student.json").read_text())
    assert student["arch"] == "ltb_w16" and student["method"] == "kd" and student["tree_from"] == "own"
    assert {"structure_test_top1", "routing_entropy_level1", "routing_entropy_level3"} <= set(student)
    routing = json.loads((repo / "data/student/routing.json").read_text())
    classes = json.loads((repo / "data/prepared/card.json").read_text())["classes"]
    assert sorted(p["class"] for p in routing["tree"]["class_paths"]) == sorted(classes)  # leaves: every class
    assert sum(len(g) for g in routing["tree"]["groups"]["level3"]) == len(classes)
    curves = json.loads((repo / "data/student/structure_curves.json").read_text())
    assert [r["epoch"] for r in curves] == [1, 2] and "routing/entropy/level2" in curves[0]
    report = json.loads((repo / "metrics/report.json").read_text())
    assert set(report["routing"]["models"]) == {"baseline", "student"}
    assert report["routing"]["models"]["baseline"]["method"] == "ce"
    assert isinstance(report["routing"]["lower_entropy_than_ce"], bool)
    md = (repo / "reports/report.md").read_text()
    assert "## How the classes route through the tree" in md
    for f in ("routing_baseline.png", "routing_student.png", "tree_student.png", "gate_entropy.png"):
        assert (repo / "reports/figures" / f).is_file(), f

    out = _run(repo, "python", "-m", "explain.compare").stdout
    table = (repo / "reports/compare.md").read_text()
    assert out.strip() == table.strip()
    for arm in ("ltb_w16 / ce", "ltb_w16 / kd"):  # the CE arm is the experiment's baseline
        assert f"| {arm} |" in table, arm
    assert "KD's mean gate entropy" in table and "vs CE's" in table
    assert "no LS arm yet" in table  # (the LS arm: tests/test_ltb_training.py; a verdict: tests/test_compare.py)
    client, runs = _runs(repo)
    assert [r for r in runs if r.data.tags["kdlens.stage"] == "compare"]


def test_vam_costs_few_parameters_and_reaches_the_comparison(repo):
    # The workspace still holds the LTB arm: back to resnet8, and kd with VAM.
    before = {r.info.run_id for r in _runs(repo)[1]}
    _run(repo, "dvc", "exp", "run", "-S", "student.arch=resnet8", "-S", "method=kd", "-S", "vam.enabled=true",
         "-n", "vam-kd")
    assert "train_teacher" not in _new_stages(repo, before)  # the teacher comes from DVC's cache
    vam = json.loads((repo / "metrics/student.json").read_text())
    baseline = json.loads((repo / "metrics/baseline.json").read_text())
    groups = 4  # params.yaml default; resnet8's stage -2 has 32 channels
    assert vam["params_vam"] == groups * groups and baseline["params_vam"] == 0
    assert vam["params_student"] == baseline["params_student"] + groups * groups
    assert vam["teacher_source"] == "cache"  # kd reads the cached teacher logits
    table = _run(repo, "python", "-m", "explain.compare").stdout
    assert "| resnet8 / kd + VAM |" in table and "| resnet8 / ce |" in table
