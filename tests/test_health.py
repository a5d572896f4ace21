"""training/health.py on hand-built epoch records whose verdicts are known, and the report's health section."""
from explain.report import ROLES, markdown, summarise
from training.health import health


def _records(n=10, top1=80.0, losses=None, **gradnorms):
    """``n`` epochs; ``gradnorms``: term -> one norm per epoch (or one for all)."""
    out = []
    for e in range(1, n + 1):
        r = {"epoch": e, "train/top1": top1, "train/loss": losses[e - 1] if losses else 1.0 / e}
        for term, norms in gradnorms.items():
            r[f"gradnorm/{term}"] = norms[e - 1] if isinstance(norms, list) else norms
        out.append(r)
    return out


def test_a_healthy_training_has_no_flag():
    assert health(_records(ce=1.0, kd=3.0), 10, "methods.kd") == []


def test_a_term_far_above_the_labels_for_several_epochs_is_flagged_with_its_section():
    rkd = [12.0, 11.0, 10.5, 13.0, 2.0, 2.0, 20.0, 20.0, 1.0, 1.0]  # epochs 1-4, then only 7-8 (too short)
    flags = health(_records(ce=1.0, rkd=rkd), 10, "methods.rkd")
    assert [(f["kind"], f["term"], f["epochs"]) for f in flags] == [("dominant_term", "rkd", [1, 4])]
    assert "up to 13x the gradient of the labels' cross-entropy (at weight 1) in epochs 1-4" in flags[0]["message"]
    assert "methods.rkd" in flags[0]["message"]


def test_a_term_that_only_dominates_once_the_labels_are_fit_is_not_flagged():
    """dkd-like: the labels' CE falls below half of ln 10 by epoch 4, and only then does the term pass 10x."""
    records = _records(ce=1.0, dkd=[2.0, 4.0, 8.0, 12.0, 14.0, 16.0, 18.0, 20.0, 20.0, 20.0])
    for r, ce in zip(records, [2.3, 1.9, 1.4, 1.0, 0.8, 0.6, 0.5, 0.4, 0.4, 0.4]):
        r["train/ce"] = ce
    assert health(records, 10, "methods.dkd") == []
    for r in records:
        r["train/ce"] = 2.0  # the same norms while the labels stay unlearnt: flagged
    assert [f["epochs"] for f in health(records, 10, "methods.dkd") if f["kind"] == "dominant_term"] == [[4, 10]]


def test_a_method_that_down_weights_the_labels_is_judged_against_them_at_weight_one():
    """kd's default (ce_weight 0.1): its term at 55x the *weighted* CE is 5.5x the labels' own pull."""
    assert health(_records(ce=1.0, kd=55.0), 10, "methods.kd", ce_weight=0.1) == []
    flags = health(_records(ce=1.0, kd=150.0), 10, "methods.kd", ce_weight=0.1)
    assert [f["epochs"] for f in flags] == [[1, 10]] and "up to 15x" in flags[0]["message"]


def test_without_a_label_term_no_ratio_is_formed():
    assert health(_records(kd=50.0), 10, "methods.kd") == []  # e.g. a pure soft-target loss


def test_training_near_chance_after_the_first_epochs_is_flagged():
    flags = health(_records(top1=13.0), 10, "methods.rkd")
    assert [(f["kind"], f["epochs"]) for f in flags] == [("near_chance", [3, 10])]
    assert "near chance (10.0% for 10 classes)" in flags[0]["message"]
    assert health(_records(top1=16.0), 10, "methods.rkd") == []  # above 1.5x chance: learning
    slow_start = _records(top1=40.0)
    slow_start[2]["train/top1"] = 14.1  # epoch 3
    assert [f["kind"] for f in health(slow_start, 10, "methods.rkd")] == []  # one epoch at the threshold
    slow_start[3]["train/top1"] = 14.9  # ... and the next: a stretch of two
    assert [(f["kind"], f["epochs"]) for f in health(slow_start, 10, "methods.rkd")] == [("near_chance", [3, 4])]


def test_a_labels_fit_still_near_chance_at_mid_schedule_is_flagged():
    slow = _records(top1=40.0)
    for r in slow:
        r["train/ce"] = 2.3 - 0.05 * r["epoch"]  # 2.05 at epoch 5 of 10, chance ln 10 = 2.30
    flags = health(slow, 10, "methods.rkd")
    assert [(f["kind"], f["epochs"]) for f in flags] == [("slow_fit", [5, 5])]
    assert "still 2.05 (chance 2.30) at epoch 5 of 10" in flags[0]["message"] and "methods.rkd" in flags[0]["message"]
    assert health(slow, 10, "methods.kd", ce_weight=2.0) == []  # 1.03 at weight 1: fitting
    for r in slow:
        r["train/ce"] = 2.3 / r["epoch"]
    assert health(slow, 10, "methods.rkd") == []


def test_a_loss_that_rises_far_above_its_lowest_is_flagged():
    flags = health(_records(n=5, losses=[2.0, 1.0, 0.5, 1.6, 0.4]), 10, "methods.kd")
    assert [(f["kind"], f["epochs"]) for f in flags] == [("unstable_loss", [4, 4])]


def test_the_report_opens_with_the_flags_and_says_nothing_when_healthy():
    net = {"arch": "resnet8", "method": "rkd", "test_top1": 37.2, "best_test_top1": 40.0, "params_student": 1,
           "params_method_extra": 0, "images_per_s": 1.0, "mlflow_run_id": None}
    flag = health(_records(top1=12.0), 10, "methods.rkd")
    results = {r: {**net, "health": flag if r == "student" else []} for r in ROLES}
    report = summarise({"name": "scenes"}, results)
    assert report["health"]["student"] == flag and report["health"]["baseline"] == []
    text = markdown(report, "sqlite:////x/mlflow.db", None)
    head = text.split("| network |")[0]
    assert "**Training health**" in head and f"- distilled student: {flag[0]['message']}" in head
    del results["student"]["health"]  # a metrics file from before the check: no section, no error
    assert "Training health" not in markdown(summarise({"name": "scenes"}, results), "sqlite:////x/mlflow.db", None)
