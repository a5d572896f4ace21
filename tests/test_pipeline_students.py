"""Students that need more than a loss, through the real pipeline (tiny profile, one temporary git repo
for the whole file: a copy of the project tests/conftest.py reproduces once for the run). One repo,
because each of these paths starts from the teacher and baseline of the one before, as a user's next
experiment does:

1. letKD: `dvc exp run -S method=letkd2` distils from the supervision `dvc repro` built (one MLflow run,
   with its inertia history, cluster-size plot and device) and re-runs only `distill`, the student's
   sigma and `report` (as other methods do: test_pipeline.py's sweep). The distilled student's model.pt
   and kept checkpoints carry the KD layers it was evaluated with, and the sigma stage analyses the
   student with them.
2. KDExplainer's study: the LTB student's CE arm (the baseline) and KD arm as one experiment, their
   routing report and the cross-experiment comparison; then VAM on a resnet8 student, whose baseline
   comes back from DVC's run cache. (The label-smoothing arm runs in tests/test_ltb_training.py, the
   comparison's verdicts in tests/test_compare.py, to keep this short.)
"""
import json

import pytest
import torch
import yaml

from pipeline_project import mlflow_runs, run_cmd

pytestmark = pytest.mark.cost(130)


@pytest.fixture(scope="module")
def repo(reproduced_repo):
    return reproduced_repo


def _stage_runs(repo, stage):
    return [r for r in mlflow_runs(repo)[1] if r.data.tags["kdlens.stage"] == stage]


def _new_stages(repo, before):
    return sorted(r.data.tags["kdlens.stage"] for r in mlflow_runs(repo)[1] if r.info.run_id not in before)


def _layer_count(c, k):
    """One KD layer by hand: 2·K·C kernel weights, 2K BN affine, 2 scales, 2K+1 BN buffers."""
    return 2 * k * c + 2 * k + 2 + 2 * k + 1


def test_letkd2_distils_from_the_supervision_the_pipeline_built_once(repo):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    sup_params = p["supervision"]
    before = {r.info.run_id for r in mlflow_runs(repo)[1]}
    run_cmd(repo, "dvc", "exp", "run", "-S", "method=letkd2", "-n", "letkd2-run")
    assert _new_stages(repo, before) == ["distill", "estimate_sigma@student", "report"]  # supervision reused

    client, _ = mlflow_runs(repo)
    (sup_run,) = _stage_runs(repo, "build_supervision")
    summary = json.loads((repo / "metrics/supervision.json").read_text())
    assert summary["mlflow_run_id"] == sup_run.info.run_id
    assert summary["kmeans_device"] == "faiss-cpu" == sup_run.data.tags["kdlens.kmeans_device"]
    assert sup_run.data.params["supervision.k"] == str(sup_params["k"])
    inertia = [m.value for m in client.get_metric_history(sup_run.info.run_id, "kmeans/inertia")]
    assert 2 <= len(inertia) <= sup_params["iterations"]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(inertia, inertia[1:])), inertia  # Lloyd never goes up
    assert "plots/cluster_sizes.png" in [a.path for a in client.list_artifacts(sup_run.info.run_id, "plots")]
    assert "seconds/total" in sup_run.data.metrics

    card = json.loads((repo / "data/supervision/card.json").read_text())
    k, n_sub = sup_params["k"], card["num_classes"] * sup_params["subclasses"]
    assert card["arrays"]["centroids"]["shape"] == [k, 64]  # resnet8 teacher: 64-channel last stage
    assert card["arrays"]["decision"]["shape"] == [n_sub, n_sub]
    assert card["penult_grid"] == [8, 8] and card["inter_grid"] == [16, 16]

    student = json.loads((repo / "metrics/student.json").read_text())
    assert student["method"] == "letkd2"
    # student resnet8: last stage 64 channels (K = k), stage -2 32 channels (K = classes x sub-classes)
    assert student["params_method_extra"] == _layer_count(64, k) + _layer_count(32, n_sub)
    saved = torch.load(repo / "data/student/model.pt", weights_only=True)
    assert {"penult.predictor.weight", "inter.value.weight"} <= set(saved["method"])
    assert saved["meta"]["method_parts"]["inter_stage"] == sup_params["inter_stage"]
    kept = torch.load(repo / "data/student/checkpoints/epoch_002.pt", weights_only=True)
    assert set(kept["method"]) == set(saved["method"])  # every kept epoch has its layers' state
    assert json.loads((repo / "metrics/sigma_student.json").read_text())["with_method_parts"] is True
    (distill,) = [r for r in _stage_runs(repo, "distill") if r.data.tags["kdlens.method"] == "letkd2"]
    for key in ("train/ce", "train/penult", "train/inter", "gradnorm/penult", "gradnorm/inter"):
        assert key in distill.data.metrics, key
    assert distill.data.metrics["gradnorm/penult"] > 0 and distill.data.metrics["gradnorm/inter"] > 0
    assert distill.data.params["input.supervision_sha256"] == card["sha256"][:12]


LTB = ("-S", "student.arch=ltb_w16")


def test_ltb_arms_their_routing_report_and_the_comparison(repo):
    run_cmd(repo, "dvc", "exp", "run", *LTB, "-S", "method=kd", "-n", "ltb-kd")
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

    out = run_cmd(repo, "python", "-m", "explain.compare").stdout
    table = (repo / "reports/compare.md").read_text()
    assert out.strip() == table.strip()
    for arm in ("ltb_w16 / ce", "ltb_w16 / kd"):  # the CE arm is the experiment's baseline
        assert f"| {arm} |" in table, arm
    assert "KD's mean gate entropy" in table and "vs CE's" in table
    assert "no LS arm yet" in table  # (the LS arm: tests/test_ltb_training.py; a verdict: tests/test_compare.py)
    client, runs = mlflow_runs(repo)
    assert [r for r in runs if r.data.tags["kdlens.stage"] == "compare"]


def test_vam_costs_few_parameters_and_reaches_the_comparison(repo):
    # The workspace still holds the LTB arm: back to resnet8 (the letKD experiments' student), and kd with VAM.
    before = {r.info.run_id for r in mlflow_runs(repo)[1]}
    run_cmd(repo, "dvc", "exp", "run", "-S", "student.arch=resnet8", "-S", "method=kd", "-S", "vam.enabled=true",
         "-n", "vam-kd")
    new = _new_stages(repo, before)
    assert "train_teacher" not in new and "train_baseline" not in new, new  # both come from DVC's run cache
    vam = json.loads((repo / "metrics/student.json").read_text())
    baseline = json.loads((repo / "metrics/baseline.json").read_text())
    groups = 4  # params.yaml default; resnet8's stage -2 has 32 channels
    assert vam["params_vam"] == groups * groups and baseline["params_vam"] == 0
    assert vam["params_student"] == baseline["params_student"] + groups * groups
    assert vam["teacher_source"] == "cache"  # kd reads the cached teacher logits
    table = run_cmd(repo, "python", "-m", "explain.compare").stdout
    assert "| resnet8 / kd + VAM |" in table and "| resnet8 / ce |" in table
