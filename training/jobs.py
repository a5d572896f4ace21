"""One training job (teacher, baseline student or distilled student), shared by the training stages.

It builds the networks and the method, trains with ``training.trainer.fit``, writes the stage's outputs
(final weights, kept checkpoints, metrics JSON, per-epoch curves) and logs everything to MLflow. With
``trainer.nproc`` > 1 it does so on that many processes under torchrun (core/distributed.py).

``run_import_job`` is the ``train_teacher`` stage for a teacher trained elsewhere (``teacher.checkpoint``):
it imports the file (models/imported.py), evaluates it on the prepared test split and writes what a trained
teacher writes, ``data/teacher/model.pt``, ``metrics/teacher.json`` and its curve (one point), logged to
MLflow; the metrics record the file's SHA-256 and layout instead of an epoch count.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import methods
import models
from core import checkpoint, distributed
from core.device import device
from core.files import sha256_file, write_json
from core.paths import CHECKPOINT_DIR, MODEL_FILE, WEIGHT_DISTANCE_FILE
from core.stage import work_dir
from core.tracking import StageRun
from dataset.store import Prepared, load_prepared
from explain.plots import training_curves
from models.base import count_parameters
from models.saved import load_model
from models.vam import VamParams, vam_parameter_count

from .params import StructureParams, TeacherParams, TrainerParams, TrainParams
from .fitter import Fitter, loaders, new_student
from .health import health
from .structure import learn_structure, write_structure
from .teacher import Views, frozen_teacher, open_cache
from .trainer import FitResult, evaluate


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
    structure: StructureParams | None = None  # stage 1 of a learned-structure student (ltb); else unused
    vam: VamParams | None = None  # the Virtual Attention Module (distilled student only)
    teacher_cache_path: Path | None = None  # data/teacher_cache: used by methods that read only logits
    trainer: TrainerParams = TrainerParams()  # how many processes, SyncBatchNorm
    role: str = "student"  # the params section of ``train`` and ``structure`` (named in errors)
    workers: int = 0  # data.workers: decoding processes of a streamed dataset (no output depends on it)


@dataclass
class Trained:
    student: torch.nn.Module
    method: methods.Method
    result: FitResult  # the (final) training
    structure: FitResult | None = None  # stage 1 of a learned-structure student
    stage1_state: dict | None = None  # that student's weights after stage 1 (its own soft routing)
    teacher_source: str = "none"  # "live", "cache" or "live (why the cache was not used)"


def reads_teacher_logits_only(method: str) -> bool:
    """Such a method can learn from the cached teacher logits (stage cache_teacher)."""
    cls = methods.get(method)
    return cls.needs_teacher and not cls.uses_features


def train_network(arch: str, cfg: TrainParams, seed: int, method_name: str, method_params, data: Prepared,
                  work: Path, teacher=None, name: str = "train", on_epoch=None, supervision=None,
                  structure: StructureParams | None = None, vam: VamParams | None = None,
                  teacher_cache: tuple[Path, dict] | None = None, sync_bn: bool = False,
                  compile_teacher: bool = False) -> Trained:
    """Build a student and its method and train them. A learned-structure student (``ltb``) first learns
    its routing (``structure.train``, stage 1, same method), then keeps the hard tree -- its own or a CE
    stage 1's (``structure.tree_from``) -- and retrains re-initialised weights with ``cfg`` (stage 2).

    The teacher runs BN-folded (training/teacher.py), its forward compiled if ``compile_teacher``.
    ``teacher_cache`` = (cache dir, the data's and teacher's SHA-256): a logit-only method's main training
    reads the cached logits instead, if the cache holds exactly this training's views;
    ``Trained.teacher_source`` says which was used and why.
    ``sync_bn``: across processes, the student's and the method's BatchNorms become SyncBatchNorm.
    """
    dev = device()
    student = new_student(arch, data.num_classes, data.input_size, seed, vam, dev)
    train, test = loaders(data, cfg, seed, dev)
    fast = frozen_teacher(teacher, data.input_size, compile_teacher) if teacher is not None else None
    cached, source = None, "none"
    if fast is not None:
        source = "live"
        if teacher_cache is not None and reads_teacher_logits_only(method_name):
            cached, why = open_cache(teacher_cache[0], Views.of(train, cfg.epochs), teacher_cache[1], dev,
                                     methods.get(method_name).extra_views)
            source = "cache" if cached is not None else f"live ({why})"

    fitter = Fitter(student, data, cfg, seed, work, name, train, test, teacher, fast, supervision, sync_bn, dev)
    stage1 = stage1_state = None
    if structure is not None and student.learns_structure:
        stage1, stage1_state = learn_structure(fitter, arch, vam, method_name, method_params, structure, on_epoch)
    method, result = fitter(student, method_name, method_params, cfg, work, on_epoch, teacher_outputs=cached)
    return Trained(student, method, result, stage1, stage1_state, source)


def run_train_job(job: TrainJob) -> dict:
    """The training stages' body: train, then write outputs and log them (see module docstring). On
    several processes, this process becomes torchrun first, and rank 0 returns the summary (others {})."""
    size = distributed.processes(job.trainer.nproc)
    if size > 1:
        sizes = {f"{job.role}.train.batch_size": job.train.batch_size}
        if job.structure is not None and models.family(job.arch).learns_structure:
            sizes[f"{job.role}.structure.train.batch_size"] = job.structure.train.batch_size
        distributed.check_split(size, sizes, job.trainer.sync_bn)
    distributed.relaunch(size)
    with distributed.process_group():
        return _train_job(job)


def _train_job(job: TrainJob) -> dict:
    world = distributed.world()
    dev = device()
    data = load_prepared(job.data_dir, job.workers)
    card = data.card
    # A method that needs no teacher (e.g. ``ce`` in the distill stage) must not pay for its forward pass.
    use_teacher = job.teacher_path is not None and methods.get(job.method).needs_teacher
    teacher = load_model(job.teacher_path, dev) if use_teacher else None
    needs_sup = job.supervision_path is not None and methods.get(job.method).needs_supervision
    supervision = methods.get(job.method).load_supervision(job.supervision_path) if needs_sup else None
    cfg = job.train

    inputs = {"data_sha256": card["sha256"]}
    if job.teacher_path:
        inputs["teacher_sha256"] = sha256_file(job.teacher_path)
    if supervision is not None:
        inputs["supervision_sha256"] = supervision["card"]["sha256"]
    logged = {"device": str(dev), "trainer.nproc": world.size, "trainer.sync_bn": job.trainer.sync_bn,
              **({"trainer.compile_teacher": job.trainer.compile_teacher} if use_teacher else {})}
    with StageRun.keyed(job.stage, card["name"], job.params_slice, inputs, logged, job.method) as run, \
            work_dir(job.stage, run.key) as wd:
        trained = train_network(
            job.arch, cfg, job.seed, job.method, job.method_params, data, wd, teacher=teacher, name=job.stage,
            on_epoch=lambda rec: run.log_metrics(rec, step=rec["epoch"]), supervision=supervision,
            structure=job.structure, vam=job.vam,
            teacher_cache=(job.teacher_cache_path, {k: inputs[k] for k in ("data_sha256", "teacher_sha256")})
            if job.teacher_cache_path else None, sync_bn=job.trainer.sync_bn,
            compile_teacher=job.trainer.compile_teacher)
        if not world.main:
            return {}  # rank 0 writes the outputs and logs them; the others wait (distributed.process_group)
        student, method, result = trained.student, trained.method, trained.result
        counts = {"params/student": count_parameters(student), "params/vam": vam_parameter_count(student),
                  "params/method_extra": method.extra_parameter_count()}
        run.log_metrics(counts)
        run.set_tags({"kdlens.teacher_source": trained.teacher_source})
        # Outputs: final weights, kept checkpoints (moved out of the work dir), metrics and curves.
        job.out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"arch": job.arch, "num_classes": data.num_classes, "epoch": cfg.epochs, "stage": job.stage,
                "method": job.method, "params_hash": run.key, "vam": student.extension_config("vam"),
                "method_parts": method.test_time_config() if method.part_of_student else None}
        extra = {"method": method.state_dict()} if method.part_of_student else {}  # e.g. letKD's KD layers
        checkpoint.save(job.out_dir / MODEL_FILE, {"model": student.state_dict(), "meta": meta, **extra})
        ckpt_dir = job.out_dir / CHECKPOINT_DIR
        ckpt_dir.mkdir(exist_ok=True)
        for epoch, path in sorted(result.kept.items()):
            shutil.move(str(path), ckpt_dir / path.name)
        # Per-layer weight distance over training: the knowledge metrics' learning-effort axis.
        write_json(job.out_dir / WEIGHT_DISTANCE_FILE, result.weight_distance)
        history = result.history
        structure = write_structure(job.out_dir, job.arch, job.method, job.structure.tree_from, trained.student,
                                    trained.stage1_state, trained.structure, meta, data, run) \
            if trained.structure is not None else {}
        best = max(history, key=lambda r: r["test/top1"])
        flags = health(history, data.num_classes, f"methods.{job.method}", method.params.ce_weight)
        for flag in flags:
            print(f"[{job.stage}] health: {flag['message']}", file=sys.stderr)
        run.set_tags({"kdlens.health": ",".join(sorted({f["kind"] for f in flags})) or "ok"})
        summary = {
            "stage": job.stage, "arch": job.arch, "method": job.method, "seed": job.seed,
            "dataset": card["name"], "epochs": cfg.epochs,
            "test_top1": history[-1]["test/top1"], "test_top5": history[-1]["test/top5"],
            "best_test_top1": best["test/top1"], "best_epoch": best["epoch"],
            "train_top1": history[-1]["train/top1"],
            "images_per_s": sum(r["images_per_s"] for r in history) / len(history),
            **{k.replace("/", "_"): v for k, v in counts.items()}, **structure,
            "kept_epochs": sorted(result.kept), "resumed_from_epoch": result.resumed_from,
            "teacher_source": trained.teacher_source, "nproc": world.size, "health": flags,
            "mlflow_run_id": run.run_id, "mlflow_experiment_id": run.experiment_id, "params_hash": run.key,
        }
        run.log_metrics({"final/test_top1": summary["test_top1"], "final/best_test_top1": summary["best_test_top1"],
                         **{f"final/{k}": v for k, v in structure.items() if isinstance(v, float)}})
        write_json(job.curves_path, history)
        write_json(job.metrics_path, summary)
        run.log_artifact(job.metrics_path)
        run.log_artifact(job.curves_path, "curves")  # same file name as the summary: keep both
        run.log_figure(training_curves({job.stage: history}), "plots/training_curves.png")
    return summary


SOURCE = "imported"  # metrics' "method" of an imported teacher (a trained one's is "ce")


def run_import_job(stage: str, teacher: TeacherParams, data_dir: Path, out_dir: Path, metrics_path: Path,
                   curves_path: Path, params_slice: dict, workers: int = 0) -> dict:
    path = Path(teacher.checkpoint)  # check_params has checked that it exists and fits the arch
    data = load_prepared(data_dir, workers)
    # Before any logging: a file that does not fit the arch stops here, in one line.
    network, layout = models.import_checkpoint(teacher.arch, path, data.num_classes)
    sha = sha256_file(path)
    dev = device()
    inputs = {"data_sha256": data.card["sha256"], "checkpoint_sha256": sha}
    with StageRun.keyed(stage, data.card["name"], params_slice, inputs, {"device": str(dev)}, SOURCE) as run:
        _, test = loaders(data, teacher.train, teacher.seed, dev)
        start = time.perf_counter()
        result = evaluate(network.to(dev), test, desc=f"{stage} (imported {path.name})")
        images_per_s = test.num_samples / (time.perf_counter() - start)  # of the evaluation: it trained elsewhere
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"arch": teacher.arch, "num_classes": data.num_classes, "epoch": None, "stage": stage,
                "method": SOURCE, "params_hash": run.key, "vam": None, "method_parts": None,
                "checkpoint": str(path), "checkpoint_sha256": sha, "layout": layout}
        checkpoint.save(out_dir / MODEL_FILE, {"model": network.state_dict(), "meta": meta})
        history = [{"epoch": 0, "test/top1": result["top1"], "test/top5": result["top5"], "test/loss": result["loss"]}]
        summary = {
            "stage": stage, "arch": teacher.arch, "method": SOURCE, "dataset": data.card["name"],
            "checkpoint": str(path), "checkpoint_sha256": sha, "layout": layout,
            "test_top1": result["top1"], "test_top5": result["top5"], "test_loss": result["loss"],
            "best_test_top1": result["top1"], "params_student": count_parameters(network), "params_vam": 0,
            "params_method_extra": 0, "images_per_s": images_per_s, "health": [],
            "mlflow_run_id": run.run_id, "mlflow_experiment_id": run.experiment_id, "params_hash": run.key,
        }
        run.set_tags({"kdlens.teacher_source": f"imported ({layout})"})
        run.log_metrics({"final/test_top1": result["top1"], "final/test_top5": result["top5"],
                         "final/test_loss": result["loss"]})
        write_json(curves_path, history)
        write_json(metrics_path, summary)
        run.log_artifact(metrics_path)
    print(f"[{stage}] imported {teacher.arch} from {path} ({layout}): test top-1 {result['top1']:.2f}%")
    return summary
