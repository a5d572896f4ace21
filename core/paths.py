"""Every file path a stage reads or writes, relative to the project root. dvc.yaml names the same paths
(tests/test_architecture.py checks that each of its data paths is one of these)."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data/prepared")
PARAMS_CHECK = Path("data/params_check.json")  # check_params: the same bytes for every valid params.yaml
METRICS = Path("metrics")
CURVES = METRICS / "curves"
REPORTS = Path("reports")
REPORT = REPORTS / "report.md"
FIGURES = REPORTS / "figures"  # every report figure (a DVC plots directory)
TEACHER_CACHE = Path("data/teacher_cache")  # the teacher's logits per training view (cache_teacher)
SUPERVISION = Path("data/supervision")  # teacher-derived supervision (build_supervision -> letkd1/letkd2)
SIGMA = Path("data/sigma")  # estimate_sigma@<role>: sigma maps at every kept checkpoint
TEACHERS = Path("teachers")  # imported teacher files (teacher.checkpoint): the train_teacher stage's dependency

# Inside a training stage's output directory data/<role>/ (and its resumable work directory).
MODEL_FILE = "model.pt"  # the final weights and the meta load_model rebuilds the network from
CHECKPOINT_DIR = "checkpoints"  # kept epochs, epoch_XXX.pt
LAST_FILE = "last.pt"  # resumable state of a running training (work directory only)
PREVIOUS_FILE = "previous.pt"  # the state one epoch before last.pt: the fallback if last.pt is unreadable
WEIGHT_DISTANCE_FILE = "weight_distance.json"
STAGE1_FILE = "stage1.pt"  # a learned-structure student (ltb) after stage 1: the soft-routed net
ROUTING_FILE = "routing.json"  # its routing explanation (explain/routing.py)
STRUCTURE_CURVES_FILE = "structure_curves.json"  # stage 1's epoch records
SIGMA_FILE = "sigma.npz"
_KEPT = re.compile(r"epoch_(\d{3,})\.pt")


def project_root() -> Path:
    """The project (DVC sets ``$DVC_ROOT`` to the parent repo, also in ``--temp``/``--queue`` runs)."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def work_path(stage: str, key: str) -> Path:
    """The resumable work directory of (stage, run key): outside the stage's outputs, which DVC deletes
    before running it, under ``.dvc/tmp/kdlens/`` (git-ignored by DVC); core/stage.work_dir claims it."""
    root = project_root()
    base = root / ".dvc" / "tmp" / "kdlens" if (root / ".dvc").is_dir() else Path(tempfile.gettempdir()) / "kdlens"
    return base / f"{stage.replace('@', '-')}-{key}"


def role_dir(role: str) -> Path:
    """data/teacher, data/baseline, data/student: final weights and kept checkpoints."""
    return Path("data") / role


def model_path(role: str) -> Path:
    return role_dir(role) / MODEL_FILE


def metrics_path(name: str) -> Path:
    """metrics/<name>.json (a stage's summary, read by DVC and the report)."""
    return METRICS / f"{name}.json"


def curves_path(role: str) -> Path:
    return CURVES / f"{role}.json"


def sigma_path(role: str) -> Path:
    return SIGMA / role / SIGMA_FILE


def kept_name(epoch: int) -> str:
    """The file name of the checkpoint kept after ``epoch`` (epoch 0: the initial weights)."""
    return f"epoch_{epoch:03d}.pt"


def kept_checkpoints(directory: Path) -> dict[int, Path]:
    """{epoch: path} of the kept checkpoints in ``directory`` (the names ``kept_name`` writes)."""
    found = {}
    for path in directory.glob("epoch_*.pt"):
        m = _KEPT.fullmatch(path.name)
        if m:
            found[int(m.group(1))] = path
    return dict(sorted(found.items()))
