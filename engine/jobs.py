"""One training job (teacher, baseline student or distilled student), shared by the training stages.

It builds the networks and the method, trains with ``engine.trainer.fit``, writes the stage's outputs
(final weights, kept checkpoints, metrics JSON, per-epoch curves) and logs everything to MLflow.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

import methods
import models
from explain.plots import training_curves
from models.base import count_parameters

from . import checkpoint
from .datasets.store import Prepared, load_prepared
from .device import device
from .errors import KdlensError
from .files import sha256_file, write_json
from .loader import Loader
from .params import TrainParams, flatten, params_hash
from .stage import work_dir
from .supervision import load_supervision
from .trainer import fit
from .tracking import StageRun

MODEL_FILE = "model.pt"
CHECKPOINT_DIR = "checkpoints"
WEIGHT_DISTANCE_FILE = "weight_distance.json"


def load_model(path: str | Path, dev: torch.device | None = None) -> models.Classifier:
    """Rebuild a network from a kdlens ``model.pt`` (architecture and class count are in its meta)."""
    state = checkpoint.load(path, required=("model", "meta"))
    meta = state["meta"]
    model = models.create(meta["arch"], meta["num_classes"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise KdlensError(f"{path}: weights do not fit {meta['arch']} ({str(e).splitlines()[0]}); "
                          "re-run the stage that writes it") from None
    return model.to(dev or device())


@dataclass
class TrainJob:
    stage: str  # DVC stage name, also the MLflow run name
    arch: str
    train: TrainParams
    seed: int
    method: str
    method_params: methods.MethodParams
    data_dir: Path
    out_dir: Path  # data/<role>: model.pt and checkpoints/
    metrics_path: Path  # metrics/<role>.json
    curves_path: Path  # metrics/curves/<role>.json
    params_slice: dict  # the params this stage declares (logged and hashed)
    teacher_path: Path | None = None
    supervision_path: Path | None = None  # data/supervision: loaded only for a method that needs it


def build_method(name: str, params: methods.MethodParams, student, teacher, data: Prepared, supervision=None):
    ctx = methods.MethodContext(student=student, teacher=teacher, num_classes=data.num_classes,
                                num_train=len(data.train.labels), input_size=data.train.images.shape[-1],
                                train_labels=torch.from_numpy(data.train.labels), supervision=supervision)
    try:
        return methods.create(name, params, ctx)
    except methods.MethodNotApplicable as e:
        raise KdlensError(f"method {name!r} with student {type(student).__name__}: {e}") from None


def loaders(data: Prepared, cfg: TrainParams, seed: int, dev: torch.device) -> tuple[Loader, Loader]:
    mean, std = data.card["mean"], data.card["std"]
    train = Loader(data.train, mean, std, cfg.batch_size, dev, augment=cfg.augment, shuffle=True,
                   seed=seed, drop_last=len(data.train.labels) >= 2 * cfg.batch_size)
    return train, Loader(data.test, mean, std, cfg.eval_batch_size, dev)


def train_network(arch: str, cfg: TrainParams, seed: int, method_name: str, method_params, data: Prepared,
                  work: Path, teacher=None, name: str = "train", on_epoch=None, supervision=None):
    """Build a student and its method, train them; returns (student, method, FitResult)."""
    dev = device()
    torch.manual_seed(seed)  # same seed + arch => the baseline and every student start alike
    student = models.create(arch, data.num_classes).to(dev)
    method = build_method(method_name, method_params, student, teacher, data, supervision).to(dev)
    train, test = loaders(data, cfg, seed, dev)
    result = fit(student, method, cfg, train, test, seed=seed, work_dir=work, teacher=teacher, name=name,
                 on_epoch=on_epoch)
    return student, method, result


def run_train_job(job: TrainJob) -> dict:
    """The training stages' body: train, then write outputs and log them (see module docstring)."""
    dev = device()
    data = load_prepared(job.data_dir)
    card = data.card
    # A method that needs no teacher (e.g. ``ce`` in the distill stage) must not pay for its forward pass.
    use_teacher = job.teacher_path is not None and methods.get(job.method).needs_teacher
    teacher = load_model(job.teacher_path, dev) if use_teacher else None
    needs_sup = job.supervision_path is not None and methods.get(job.method).needs_supervision
    supervision = load_supervision(job.supervision_path) if needs_sup else None
    # Counted before training so a method that cannot serve this pair fails before any work.
    torch.manual_seed(job.seed)
    probe = models.create(job.arch, data.num_classes).to(dev)
    counts = {"params/student": count_parameters(probe),
              "params/method_extra": build_method(job.method, job.method_params, probe, teacher,
                                                  data, supervision).extra_parameter_count()}
    cfg = job.train

    inputs = {"data_sha256": card["sha256"]}
    if job.teacher_path:
        inputs["teacher_sha256"] = sha256_file(job.teacher_path)
    if supervision is not None:
        inputs["supervision_sha256"] = supervision["card"]["sha256"]
    key = params_hash({**job.params_slice, **inputs})
    logged = {**flatten(job.params_slice), **{f"input.{k}": v[:12] for k, v in inputs.items()},
              "device": str(dev)}
    with StageRun(job.stage, card["name"], logged, key, method=job.method) as run, work_dir(job.stage, key) as wd:
        run.log_metrics(counts)
        student, method, result = train_network(
            job.arch, cfg, job.seed, job.method, job.method_params, data, wd, teacher=teacher, name=job.stage,
            on_epoch=lambda rec: run.log_metrics(rec, step=rec["epoch"]), supervision=supervision)
        # Outputs: final weights, kept checkpoints (moved out of the work dir), metrics and curves.
        job.out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"arch": job.arch, "num_classes": data.num_classes, "epoch": cfg.epochs, "stage": job.stage,
                "method": job.method, "params_hash": key}
        extra = {"method": method.state_dict()} if method.part_of_student else {}  # e.g. letKD's KD layers
        checkpoint.save(job.out_dir / MODEL_FILE, {"model": student.state_dict(), "meta": meta, **extra})
        ckpt_dir = job.out_dir / CHECKPOINT_DIR
        ckpt_dir.mkdir(exist_ok=True)
        for epoch, path in sorted(result.kept.items()):
            shutil.move(str(path), ckpt_dir / path.name)
        # Per-layer weight distance over training: the knowledge metrics' learning-effort axis.
        write_json(job.out_dir / WEIGHT_DISTANCE_FILE, result.weight_distance)
        history = result.history
        best = max(history, key=lambda r: r["test/top1"])
        summary = {
            "stage": job.stage, "arch": job.arch, "method": job.method, "seed": job.seed,
            "dataset": card["name"], "epochs": cfg.epochs,
            "test_top1": history[-1]["test/top1"], "test_top5": history[-1]["test/top5"],
            "best_test_top1": best["test/top1"], "best_epoch": best["epoch"],
            "train_top1": history[-1]["train/top1"],
            "images_per_s": sum(r["images_per_s"] for r in history) / len(history),
            **{k.replace("/", "_"): v for k, v in counts.items()},
            "kept_epochs": sorted(result.kept), "resumed_from_epoch": result.resumed_from,
            "mlflow_run_id": run.run_id, "mlflow_experiment_id": run.experiment_id, "params_hash": key,
        }
        run.log_metrics({"final/test_top1": summary["test_top1"], "final/best_test_top1": summary["best_test_top1"]})
        write_json(job.curves_path, history)
        write_json(job.metrics_path, summary)
        run.log_artifact(job.metrics_path)
        run.log_artifact(job.curves_path)
        run.log_figure(training_curves({job.stage: history}), "plots/training_curves.png")
    return summary
