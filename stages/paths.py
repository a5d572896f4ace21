"""Where every stage reads and writes (must match dvc.yaml)."""
from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data/prepared")
METRICS = Path("metrics")
CURVES = METRICS / "curves"
REPORTS = Path("reports")
FIGURES = REPORTS / "figures"  # every report figure (a DVC plots directory)
TEACHER_CACHE = Path("data/teacher_cache")  # the teacher's logits per training view (cache_teacher)
SUPERVISION = Path("data/supervision")  # teacher-derived supervision (build_supervision -> letkd1/letkd2)


def role_dir(role: str) -> Path:
    """data/teacher, data/baseline, data/student: final weights and kept checkpoints."""
    return Path("data") / role
