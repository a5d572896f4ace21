"""MLflow tracking for a stage: one run per executed stage, with kdlens's standard tags.

* Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else SQLite at an **absolute** path under the project
  root (``$DVC_ROOT``, which DVC sets to the parent repo even inside ``--temp``/``--queue`` runs, whose
  working directory is deleted afterwards).
* One experiment per dataset (``kdlens-<dataset>``), so the students of every method sit side by side in
  the UI. In a local store it is created with an absolute artifact location; on a tracking server
  (``http(s)://``) with none, so the server's own (proxied, ``mlflow-artifacts:/``) store applies and
  every client's artifacts land there rather than on the machine that happened to create it.
* Tracking is a side effect, never an output: if MLflow fails, the stage warns and carries on.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from .schema import flatten
from .schema import params_hash as hash_params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def experiment_name(dataset: str) -> str:
    return f"kdlens-{dataset}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    return os.environ.get("DVC_EXP_BASELINE_REV", "")


def _artifact_location() -> str | None:
    if tracking_uri().startswith(("http://", "https://")):
        return None
    return (project_root() / "mlartifacts").as_uri()


class StageRun:
    """``with StageRun(...) as run:`` opens the MLflow run; ``run.run_id`` is None if tracking failed (or
    on a torchrun rank other than 0)."""

    def __init__(self, stage: str, dataset: str, params: dict[str, Any], params_hash: str,
                 method: str = "", tags: dict[str, str] | None = None):
        self.stage, self.dataset, self.params, self.method = stage, dataset, params, method
        self.tags = {
            "kdlens.stage": stage,
            "kdlens.method": method,
            "kdlens.dataset": dataset,
            "dvc.stage": os.environ.get("DVC_STAGE", stage),
            "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "git.commit": git_commit(),
            "params_hash": params_hash,
            **(tags or {}),
        }
        self.key = params_hash
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._mlflow = None

    @classmethod
    def keyed(cls, stage: str, dataset: str, params: dict[str, Any], inputs: dict[str, str],
              logged: dict[str, Any] | None = None, method: str = "") -> "StageRun":
        """The run of a stage whose work is fixed by ``params`` (a slice of params.yaml) and ``inputs``
        (SHA-256 of its input files): keyed by the hash of both (``run.key``, which also names the
        stage's resumable work directory), logging the params, each input's short hash and ``logged``."""
        return cls(stage, dataset, {**flatten(params), **{f"input.{k}": v[:12] for k, v in inputs.items()},
                                    **(logged or {})}, hash_params({**params, **inputs}), method=method)

    def _warn(self, what: str, e: Exception) -> None:
        warnings.warn(f"MLflow {what} failed ({type(e).__name__}: {e}); the stage goes on without it",
                      stacklevel=3)

    def __enter__(self) -> "StageRun":
        if os.environ.get("RANK", "0") != "0":  # a torchrun worker other than rank 0 (core/distributed.py)
            return self  # logs nothing: one run per stage
        try:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri())
            name = experiment_name(self.dataset)
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                try:
                    mlflow.create_experiment(name, artifact_location=_artifact_location())
                except Exception:  # a parallel stage created it first
                    pass
                exp = mlflow.get_experiment_by_name(name)
            run_name = os.environ.get("DVC_STAGE", self.stage)
            if self.method and self.method not in run_name:
                run_name = f"{run_name}:{self.method}"
            run = mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name, tags=self.tags)
            mlflow.log_params({k: ("" if v is None else v) for k, v in self.params.items()})
            self._mlflow, self.run_id, self.experiment_id = mlflow, run.info.run_id, exp.experiment_id
            print(f"[mlflow] run {self.run_id} in experiment {name!r} at {tracking_uri()}", file=sys.stderr)
        except Exception as e:
            self._warn("start", e)
        return self

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self._mlflow is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self._warn(what, e)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._call("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_figure(self, fig, artifact_file: str) -> None:
        self._call("log_figure", lambda: self._mlflow.log_figure(fig, artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags(tags))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._call("end_run", lambda: self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED"))
