"""The tiny kdlens project the pipeline tests run in: the project's files with the tiny params.yaml in a
temporary git repo, the commands run there, its MLflow runs, and copies of a project already reproduced
(tests/conftest.py builds one for the whole test run, so that each pipeline file need not repeat it)."""
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml

from tiny_profile import ROOT, tiny_params

BIN = Path(sys.executable).parent

# Every stage of the default method's pipeline, as its MLflow run is tagged (check_params logs none).
STAGES = ["prepare_data", "train_teacher", "train_baseline", "cache_teacher", "build_supervision", "distill",
          "estimate_sigma@baseline", "estimate_sigma@student", "report"]


def project_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               TQDM_DISABLE="1",
               OMP_NUM_THREADS="1")  # `make test` runs two test files at once: one thread per stage
    return env


def run_cmd(repo, *cmd, check=True, env=None):
    out = subprocess.run(cmd, cwd=repo, env={**project_env(), **(env or {})}, capture_output=True, text=True,
                         timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _project_files():
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    skip = ("tests/", "bench/", "metrics/", "reports/", "data/", "dvc.lock")
    shipped = "data/downloads/.gitignore"  # the default data.root, a dependency of prepare_data
    return [f for f in listed if (not f.startswith(skip) or f == shipped) and (ROOT / f).is_file()]


def tiny_project(repo: Path) -> Path:
    """The project's files in ``repo`` with the tiny params.yaml, committed (``dvc exp run`` needs a commit)."""
    for f in _project_files():
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, repo / f)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run_cmd(repo, "git", "init", "-q")
    run_cmd(repo, "git", "add", "-A")
    run_cmd(repo, "git", "commit", "-qm", "tiny kdlens")
    return repo


def reproduce(repo: Path) -> Path:
    """``dvc repro`` of the tiny project in ``repo``, its outputs (dvc.lock) committed."""
    run_cmd(repo, "dvc", "repro")
    run_cmd(repo, "git", "add", "-A")
    run_cmd(repo, "git", "commit", "-qm", "first repro")
    return repo


def copy_project(src: Path, dst: Path) -> Path:
    """A copy of the project ``src`` (git, DVC cache, outputs, tracking store) at ``dst``. The store's
    artifact locations are absolute paths: they move with it, so that the copy's runs keep their
    artifacts and new runs write into the copy's own mlartifacts/."""
    shutil.copytree(src, dst, symlinks=True)
    db = dst / "mlflow.db"
    if db.is_file():
        old, new = src.as_uri(), dst.as_uri()
        with sqlite3.connect(db) as con:
            con.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
            con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        con.close()
    return dst


def mlflow_runs(repo):
    """The project's tracking client and the runs of its scenes experiment."""
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdlens-scenes")
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
