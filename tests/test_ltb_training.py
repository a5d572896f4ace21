"""The LTB student's two stages through training.jobs.train_network (tiny in-memory scenes, one epoch each):
stage 2 keeps stage 1's tree (its own, or a CE stage 1's with ``tree_from: ce``), retrains fresh weights,
and stage 1 records the gate entropy per level; feature-matching methods refuse the student."""
import numpy as np
import pytest
import torch

import methods
import models
from dataset import BUILDERS
from dataset.store import in_memory
from core.errors import KdlensError
from training.jobs import train_network
from dataset.params import DataParams, ScenesParams
from training.params import StructureParams, TrainParams


@pytest.fixture(scope="module")
def data():
    train, test, classes, _ = BUILDERS["scenes"](DataParams(scenes=ScenesParams(n_train=96, n_test=48)))
    return in_memory(train, test, classes, "scenes")


def _structure(tree_from="own"):
    base = StructureParams().train
    return StructureParams(train=base.model_copy(update={"epochs": 2, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 1,
                                                            "frozen_epochs": {"routing": 1}}),
                           tree_from=tree_from)


CFG = TrainParams(epochs=1, batch_size=32, lr=0.05)


def _train(data, tmp_path, method="ce", tree_from="own", teacher=None):
    return train_network("ltb_w16", CFG, 0, method, methods.params_class(method)(), data, tmp_path,
                         teacher=teacher, structure=_structure(tree_from))


def _routing(state):
    return [state[f"routing.{i}"] for i in range(3)]


def test_stage_two_keeps_the_stage_one_tree_and_retrains_fresh_weights(data, tmp_path):
    trained = _train(data, tmp_path)
    own = _routing(trained.stage1_state)
    final = trained.student.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(own, _routing(final)))  # the same routing matrices
    assert bool(final["hard"]) and not bool(trained.stage1_state["hard"])
    assert not torch.equal(final["level1.0.0.weight"], trained.stage1_state["level1.0.0.weight"])
    rec = trained.structure.history[-1]
    assert {"routing/entropy/level1", "routing/entropy/level2", "routing/entropy/level3"} <= set(rec)
    assert 0 < rec["routing/entropy/level1"] <= np.log(2) + 1e-6  # 2 parents at level 1
    assert all(p.grad is None or not p.requires_grad for p in trained.student.routing)  # frozen in stage 2


def test_tree_from_ce_takes_the_ce_stage_one_tree(data, tmp_path):
    teacher = models.create("resnet8", 10).eval()
    ce = _train(data, tmp_path / "ce")
    kd = _train(data, tmp_path / "kd", method="kd", tree_from="ce", teacher=teacher)
    ce_tree, kd_own = _routing(ce.stage1_state), _routing(kd.stage1_state)
    assert all(torch.equal(a, b) for a, b in zip(ce_tree, _routing(kd.student.state_dict())))
    assert not all(torch.equal(a, b) for a, b in zip(ce_tree, kd_own))  # KD learned another routing


def test_the_label_smoothing_arm_trains_both_stages(data, tmp_path):
    ls = _train(data, tmp_path, method="ls")
    assert ls.teacher_source == "none" and len(ls.structure.history) == 2 and len(ls.result.history) == 1
    assert "train/ls" in ls.result.history[0] and bool(ls.student.state_dict()["hard"])


def test_feature_methods_refuse_the_tree_student(data, tmp_path):
    teacher = models.create("resnet8", 10).eval()
    with pytest.raises(KdlensError, match="method 'fitnet' with student LTB: .*use a logit-only method"):
        train_network("ltb_w16", CFG, 0, "fitnet", methods.params_class("fitnet")(), data, tmp_path,
                      teacher=teacher, structure=_structure())
