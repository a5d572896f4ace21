"""The two-stage training of a student whose structure is learned (KDExplainer's LTB; Xue et al., IJCAI 2021,
Sec. 3): stage 1 learns the soft routing with the arm's own method; the student then keeps the hard tree
-- its own or a CE stage 1's (``structure.tree_from``) -- and stage 2 retrains re-initialised weights.
``write_structure`` puts stage 1's weights, epoch records and routing explanation next to model.pt."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

import methods
import models
from core import checkpoint
from core.files import write_json
from core.paths import ROUTING_FILE, STAGE1_FILE, STRUCTURE_CURVES_FILE
from core.tracking import StageRun
from dataset.store import Prepared
from explain import routing
from models.vam import VamParams

from .fitter import Fitter
from .params import StructureParams
from .trainer import FitResult

def learn_structure(fitter: Fitter, arch: str, vam: VamParams | None, method_name: str, method_params,
                    structure: StructureParams, on_epoch: Callable[[dict], None] | None
                    ) -> tuple[FitResult, dict]:
    """Stage 1 on ``fitter.student``, then its structure frozen and its weights re-initialised for stage 2.
    Returns stage 1's result and the student's weights after it (its own soft routing)."""
    student = fitter.student
    prefixed = None if on_epoch is None else (
        lambda rec: on_epoch({"epoch": rec["epoch"], **{f"structure/{k}": v for k, v in rec.items()
                                                        if k != "epoch"}}))
    _, stage1 = fitter(student, method_name, method_params, structure.train, fitter.work / "structure", prefixed)
    stage1_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    if structure.tree_from == "ce" and method_name != "ce":
        # The CE arm's stage 1: same seed and code, so the same tree the baseline learns (default ce).
        ce_net = fitter.new_student(arch, vam)
        fitter(ce_net, "ce", methods.params_class("ce")(), structure.train, fitter.work / "structure_ce")
        student.freeze_structure(like=ce_net)
    else:
        student.freeze_structure()
    torch.manual_seed(fitter.seed)
    student.reinitialise()
    return stage1, stage1_state


def write_structure(out_dir: Path, arch: str, method: str, tree_from: str, student: torch.nn.Module,
                    stage1_state: dict, stage1: FitResult, meta: dict, data: Prepared, run: StageRun) -> dict:
    """Stage 1's weights, epoch records and routing explanation (explain/routing.py) next to model.pt,
    figures in MLflow; returns the summary's extra keys."""
    checkpoint.save(out_dir / STAGE1_FILE, {"model": stage1_state, "meta": {**meta, "stage1": True}})
    write_json(out_dir / STRUCTURE_CURVES_FILE, stage1.history)
    soft = models.create(arch, data.num_classes)
    soft.load_state_dict(stage1_state)
    classes = data.card["classes"]
    summary = {"stage1": routing.routing_summary(soft.preferences(), classes),
               "tree": routing.routing_summary(student.preferences(), classes), "tree_from": tree_from}
    write_json(out_dir / ROUTING_FILE, summary)
    run.log_artifact(out_dir / ROUTING_FILE)
    run.log_figure(routing.plot_routing(soft.preferences(), classes, f"{method}: stage-1 routing"), "plots/routing.png")
    run.log_figure(routing.plot_tree(student.preferences(), classes, f"{method}: hard tree"), "plots/tree.png")
    run.log_figure(routing.plot_entropy_curves({method: stage1.history}), "plots/gate_entropy.png")
    final = stage1.history[-1]
    return {"structure_test_top1": final["test/top1"], "tree_from": tree_from,
            **{f"routing_entropy_{level}": v for level, v in summary["stage1"]["entropy"].items()
               if "/" not in level}}
